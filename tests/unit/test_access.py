"""Pure parts of keys, limits and budgets: decisions as data with a reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from zoe_edge.access.budget import SpendBook, seconds_to_midnight
from zoe_edge.access.keys import ClientKey, KeyEntry, KeyTable
from zoe_edge.access.limits import Limiter, Window
from zoe_edge.config import Settings
from zoe_edge.errors import RegistryError
from zoe_edge.registry import parse_registry

T0 = 1_700_000_000.0  # a whole second


def test_rpm_window_denies_then_slides_open() -> None:
    w = Window()
    assert w.decide(T0, rpm=2, tpm=None).allow
    assert w.decide(T0 + 10, rpm=2, tpm=None).allow
    denied = w.decide(T0 + 20, rpm=2, tpm=None)
    assert not denied.allow and "2 requests per minute" in denied.reason
    # the first request leaves the window 60 s after its second began
    assert denied.retry_after == pytest.approx(40.0)
    assert w.decide(T0 + 60.5, rpm=2, tpm=None).allow


def test_tpm_counts_tokens_charged_after_the_request() -> None:
    w = Window()
    assert w.decide(T0, rpm=None, tpm=100).allow
    w.charge(T0 + 1, 150)  # a request may overshoot; the next one waits
    denied = w.decide(T0 + 2, rpm=None, tpm=100)
    assert not denied.allow and "100 tokens per minute" in denied.reason
    assert denied.retry_after == pytest.approx(59.0)
    assert w.decide(T0 + 61.5, rpm=None, tpm=100).allow


def test_window_memory_is_bounded_by_the_minute() -> None:
    w = Window()
    for i in range(10_000):
        w.decide(T0 + i * 0.1, rpm=None, tpm=10**9)
    assert len(w.buckets) <= 60


def test_limiter_keeps_no_state_for_unlimited_keys() -> None:
    limiter = Limiter()
    for _ in range(100):
        assert limiter.decide("free", T0, None, None).allow
    limiter.charge("free", T0, 500)
    assert limiter.windows == {}


def test_key_table_finds_by_digest_and_refuses_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOE_TEST_K", "from-env")
    (tmp_path / "k.txt").write_text("from-file\n")
    entries = {
        "hashed": KeyEntry(key="sha256:" + hashlib.sha256(b"hashed-key").hexdigest(), aliases=["a"]),
        "env": KeyEntry(key="env:ZOE_TEST_K"),
        "file": KeyEntry(key="file:k.txt", role="admin"),
    }
    table = KeyTable.build(entries, tmp_path, api_key=SecretStr("plain"))
    assert [table.lookup(k).id for k in ("hashed-key", "from-env", "from-file", "plain")] == [  # type: ignore[union-attr]
        "hashed",
        "env",
        "file",
        "default",
    ]
    assert table.lookup("nope") is None and table.lookup("") is None
    assert table.has_client_keys and table.has_admin_keys
    hashed = table.lookup("hashed-key")
    assert hashed is not None and hashed.may_use("a") and not hashed.may_use("b")
    assert "hashed-key" not in repr(hashed) and "digest" not in repr(hashed)


def test_key_sources_that_are_missing_say_which_without_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ZOE_TEST_UNSET_K is not set"):
        KeyTable.build({"x": KeyEntry(key="env:ZOE_TEST_UNSET_K")}, tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        KeyTable.build({"x": KeyEntry(key="file:absent.txt")}, tmp_path)


def test_a_plain_key_in_the_registry_is_refused() -> None:
    with pytest.raises(ValidationError, match="never the key itself"):
        KeyEntry(key="my-secret-key")
    with pytest.raises(ValidationError, match="64-character"):
        KeyEntry(key="sha256:abc")


def test_registry_checks_key_aliases_and_ids() -> None:
    base = {"default": "m", "models": {"m": {"file": "m.gguf"}}}
    with pytest.raises(RegistryError) as err:
        parse_registry({**base, "keys": {"ha": {"key": "env:X", "aliases": ["ghost"]}}})
    assert "alias 'ghost' is not a model" in str(err.value)
    with pytest.raises(RegistryError, match="taken"):
        parse_registry({**base, "keys": {"admin": {"key": "env:X"}}})
    ok = parse_registry({**base, "keys": {"ha": {"key": "env:X", "aliases": ["m"], "rpm": 5}}, "usage": {}})
    assert ok.keys["ha"].rpm == 5 and ok.usage.retention_days == 90


def test_budget_book_says_why_and_rolls_over_at_utc_midnight() -> None:
    key = ClientKey("ha", daily_budget_usd=0.05)
    book = SpendBook(now=T0)
    assert book.over_budget(key, T0) is None
    book.add("ha", 0.03, T0)
    book.add("ha", 0.03, T0 + 1)
    why = book.over_budget(key, T0 + 2)
    assert why is not None and "'ha' spent $0.0600 of its $0.05 daily cloud budget" in why
    tomorrow = T0 + seconds_to_midnight(T0) + 1
    assert book.over_budget(key, tomorrow) is None
    assert book.over_budget(ClientKey("free"), T0) is None


def test_public_bind_accepts_registry_client_keys() -> None:
    assert Settings(host="0.0.0.0").check_bind() is not None
    assert Settings(host="0.0.0.0").check_bind(client_keys=True) is None
