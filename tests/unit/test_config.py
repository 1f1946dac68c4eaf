"""Daemon settings: loopback detection, the bind check, the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from zoe_edge.config import Settings, default_state_dir, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("jetson.local", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "jetson.local"])
def test_check_bind_refuses_network_bind_without_key(host: str) -> None:
    refusal = Settings(host=host).check_bind()
    assert refusal is not None
    assert host in refusal
    assert "ZOE_API_KEY" in refusal
    assert "--insecure-no-auth" in refusal


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_check_bind_allows_loopback_without_key(host: str) -> None:
    assert Settings(host=host).check_bind() is None


def test_check_bind_allows_network_bind_with_key() -> None:
    assert Settings(host="0.0.0.0", api_key=SecretStr("s3cret")).check_bind() is None


def test_check_bind_allows_network_bind_when_insecure() -> None:
    assert Settings(host="0.0.0.0", insecure_no_auth=True).check_bind() is None


def test_api_key_is_not_shown_in_repr() -> None:
    settings = Settings(host="0.0.0.0", api_key=SecretStr("s3cret-value"))
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings.model_dump())
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret-value"


def test_settings_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8001
    assert settings.api_key is None
    assert settings.insecure_no_auth is False
    assert settings.max_body_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    "fields",
    [{"port": 70000}, {"port": -1}, {"max_body_bytes": 10}, {"load_timeout_s": 0}, {"hots": "0.0.0.0"}],
)
def test_settings_rejects_bad_values(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate(fields)


def test_default_state_dir_prefers_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/zoe:/var/lib/other")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert default_state_dir() == Path("/var/lib/zoe")


def test_default_state_dir_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert default_state_dir() == Path("/xdg/zoe-edge")


def test_default_state_dir_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "zoe-edge"
