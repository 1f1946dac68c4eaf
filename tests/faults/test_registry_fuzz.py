"""Malformed models.yaml: every variant gives a RegistryError with one readable line per problem, never
another exception, and the CLI says so on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.faults.summary import fuzzed
from zoe_edge.cli import main
from zoe_edge.errors import RegistryError
from zoe_edge.registry import load_registry

BASE: dict[str, Any] = yaml.safe_load((REPO / "models.yaml").read_text())
CASES = 300
JUNK: list[Any] = [
    None, True, -1, 0, 10**30, -(10**30), 1e309, float("nan"), "", "x" * 10_000, "\x00\x01", "-5m", "forever?",
    "10 fortnights", [], [1, [2, [3]]], {}, {"a": {"b": {"c": {"d": {}}}}}, "../../etc/passwd", "pkg:", "assemble:",
    "pkg:/abs", "1e999", ".inf", "NaN",
]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in the tree (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def mutate(rng: random.Random) -> tuple[str, str]:
    """(description, YAML text) of one broken or odd registry."""
    data = copy.deepcopy(BASE)
    kind = rng.choice(["replace", "delete", "unknown key", "deep", "text"])
    target = rng.choice(paths(data))
    parent = data
    for part in target[:-1]:
        parent = parent[part]
    last = target[-1]
    if kind == "replace":
        parent[last] = rng.choice(JUNK)
    elif kind == "delete":
        del parent[last]
    elif kind == "unknown key" and isinstance(parent, dict):
        parent[f"frobnicate_{rng.randint(0, 99)}"] = rng.choice(JUNK)
    elif kind == "deep":
        value: Any = 1
        for _ in range(rng.choice([50, 500, 5000])):
            value = {"a": value}
        parent[last] = value
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (RecursionError, yaml.YAMLError):
        text = "models:\n" + "  - [\n" * 2000
    if kind == "text":
        # damage the text itself: cut it, duplicate a key, splice junk bytes or tabs in
        how = rng.choice(["cut", "dup", "tab", "junk", "flow", "anchor bomb"])
        if how == "cut":
            text = text[: rng.randint(1, len(text))]
        elif how == "dup":
            text += "default: " + str(rng.choice(["a", "smollm2-135m", "1"])) + "\n"
        elif how == "tab":
            text = text.replace("  ", "\t", rng.randint(1, 5))
        elif how == "junk":
            at = rng.randint(0, len(text))
            junk = rng.choice(["\x07", "{{", "]]", ": :", "&a *a", "!!python/object:os.system ''"])
            text = text[:at] + junk + text[at:]
        elif how == "flow":
            text = "[" * 10_000
        else:
            text = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
                for i in range(8)
            )
    return f"{kind} {target}", text


def test_malformed_registries_are_clear_errors(tmp_path: Path) -> None:
    rng = random.Random(2612)
    path = tmp_path / "models.yaml"
    errors = 0
    for i in range(CASES):
        what, text = mutate(rng)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        fuzzed()
        try:
            load_registry(path)
        except RegistryError as exc:
            errors += 1
            assert exc.problems, what
            for line in exc.problems:
                assert line.strip() and "Traceback" not in line, (what, line)
                assert len(line) < 2000, (what, line[:200])  # a readable line, not a dump of the file
        except Exception as exc:  # anything else is the bug this test exists to find
            raise AssertionError(f"case {i} ({what}) raised {type(exc).__name__}: {exc}\n{text[:500]}") from exc
    assert errors > CASES // 2  # most mutations really are broken


@pytest.mark.parametrize(
    "text",
    [b"\xff\xfe\x00binary", b"models: [", b"default: nope\nmodels: {}\n", b"{}", b"- a\n- b\n", b"models:\n  a: 5\n"],
    ids=["binary", "bad yaml", "unknown default", "empty", "a list", "entry not a mapping"],
)
def test_cli_reports_a_broken_registry_without_a_traceback(
    tmp_path: Path, text: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(text)
    fuzzed()
    with pytest.raises(SystemExit) as caught:
        main(["models", "--config", str(path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_subprocess_exit_status_and_stderr(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("default: a\nmodels:\n  a: {file: m.gguf, n_ctx: [1], ttl: soon}\n")
    fuzzed()
    result = subprocess.run(
        [sys.executable, "-m", "zoe_edge", "models", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "n_ctx" in result.stderr and "ttl" in result.stderr
