"""llama-cpp-python behind one module: the compatibility check, the worker's refusal, doctor, the import rule."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, repo_state_dir

from zoe_edge.worker import llama_compat
from zoe_edge.worker.llama_compat import SUPPORTED, check, in_supported_range, version_tuple

PACKAGE = REPO / "zoe_edge"
ALLOWED = PACKAGE / "worker" / "llama_compat.py"
INSTALLED = importlib.metadata.version("llama-cpp-python")


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make the distribution metadata report ``release[0]`` as llama-cpp-python's version."""
    reported = [INSTALLED]
    real = importlib.metadata.version

    def version(name: str) -> str:
        return reported[0] if name == "llama-cpp-python" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    yield reported


def test_the_installed_release_is_supported() -> None:
    report = check()
    assert report.ok, report.message
    assert report.version == INSTALLED
    assert report.missing == ()
    assert report.message == f"llama-cpp-python {INSTALLED} is supported ({SUPPORTED})"


@pytest.mark.parametrize("version", ["0.4.0", "0.4.1", "1.0.0", "0.3.7", "0.2.90"])
def test_a_release_outside_the_range_is_refused_by_name(release: list[str], version: str) -> None:
    release[0] = version
    report = check()
    assert not report.ok and not report.in_range and report.missing == ()
    assert report.message == (
        f"llama-cpp-python {version} is not supported (zoe-edge needs {SUPPORTED}): outside the supported range"
    )


def test_a_missing_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr("llama_cpp.Llama.set_seed")
    monkeypatch.delattr("llama_cpp.llama_state_seq_get_data")
    report = check()
    assert report.in_range and not report.ok
    assert report.missing == ("llama_cpp.Llama.set_seed", "llama_cpp.llama_state_seq_get_data")
    assert report.message == (
        f"llama-cpp-python {INSTALLED} is not supported (zoe-edge needs {SUPPORTED}): "
        "missing llama_cpp.Llama.set_seed, llama_cpp.llama_state_seq_get_data"
    )


def test_out_of_range_and_missing_are_both_said(release: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    release[0] = "0.4.2"
    monkeypatch.delattr("llama_cpp.llama_grammar.SchemaConverter._add_rule")
    message = check().message
    assert message.startswith("llama-cpp-python 0.4.2 is not supported (zoe-edge needs >=0.3.8,<0.4): ")
    assert message.endswith("outside the supported range; missing llama_cpp.llama_grammar.SchemaConverter._add_rule")
    assert "\n" not in message


def test_a_submodule_that_does_not_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp._logger", None)  # None in sys.modules: the import fails
    report = check()
    assert not report.ok
    assert "llama_cpp._logger" in report.missing
    assert report.import_error is not None and "ModuleNotFoundError" in report.import_error
    assert f"llama-cpp-python {INSTALLED} is not supported" in report.message


def test_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    report = check()
    assert report.version is None and not report.ok
    assert report.message.startswith("llama-cpp-python does not import (ModuleNotFoundError: ")
    assert report.message.endswith(f"; zoe-edge needs {SUPPORTED}")


@pytest.mark.parametrize(
    ("version", "parsed", "supported"),
    [
        ("0.3.8", (0, 3, 8), True),
        ("0.3.36", (0, 3, 36), True),
        ("0.3.99.post1", (0, 3, 99), True),
        ("0.3.7", (0, 3, 7), False),
        ("0.4.0rc1", (0, 4, 0), False),
        ("garbage", (), False),
    ],
)
def test_version_parsing(version: str, parsed: tuple[int, ...], supported: bool) -> None:
    assert version_tuple(version) == parsed
    assert in_supported_range(version) is supported


def test_every_required_attribute_exists_in_the_installed_release() -> None:
    """REQUIRED must not name something we do not use under a wrong spelling: all of it resolves today."""
    assert check().missing == ()
    assert sum(len(v) for v in llama_compat.REQUIRED.values()) > 30


def test_what_a_suspension_swaps_is_checked_on_every_loaded_model() -> None:
    """Model.__init__ refuses a Llama without them; Llama.__init__ sets each in this release."""
    import inspect

    import llama_cpp

    from zoe_edge.worker import llama_surface

    assert llama_compat.REQUIRED is llama_surface.REQUIRED
    assert set(llama_surface.LIVE_ATTRIBUTES) == {"_sampler", "_mirostat_mu", "_seed"}
    init = inspect.getsource(llama_cpp.Llama.__init__)
    for attribute in llama_surface.LIVE_ATTRIBUTES:
        assert f"self.{attribute} =" in init, attribute
    # Llama.generate rebuilds the sampler chain per call and sample() reads it: a nested generate replaces it
    generate = inspect.getsource(llama_cpp.Llama.generate)
    assert "self._sampler = self._init_sampler(" in generate and "self._mirostat_mu =" in generate


# --- who refuses --------------------------------------------------------------------------------


def test_the_worker_refuses_to_start_with_one_line(
    release: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoe_edge.worker.main import main

    release[0] = "0.4.1"
    socket = tmp_path / "w.sock"
    assert main(["--socket", str(socket)]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""  # no READY: the daemon sees a failed start
    assert captured.err == (
        "zoe-edge worker cannot start: llama-cpp-python 0.4.1 is not supported "
        f"(zoe-edge needs {SUPPORTED}): outside the supported range\n"
    )
    assert not socket.exists()


def test_the_worker_names_missing_attributes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoe_edge.worker.main import main

    monkeypatch.delattr("llama_cpp.llama_vocab_is_eog")
    assert main(["--socket", str(tmp_path / "w.sock")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"llama-cpp-python {INSTALLED} is not supported" in err and "missing llama_cpp.llama_vocab_is_eog" in err


@pytest.fixture
def doctor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZOE_API_KEY", "ZOE_CONFIG", "ZOE_HOST", "ZOE_PORT", "ZOE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZOE_STATE_DIR", str(repo_state_dir()))


def _doctor_llama_line(capsys: pytest.CaptureFixture[str]) -> str:
    from zoe_edge.cli import main

    main(["doctor", "--config", str(REPO / "models.yaml")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "llama-cpp-python" in ln]
    assert lines, "doctor printed no llama-cpp-python line"
    return lines[0]


@pytest.mark.usefixtures("doctor_env")
def test_doctor_prints_the_version_and_that_it_is_supported(capsys: pytest.CaptureFixture[str]) -> None:
    line = _doctor_llama_line(capsys)
    assert line.startswith(f"[ok] llama-cpp-python {INSTALLED} imports and is supported ({SUPPORTED}; GPU offload: ")


@pytest.mark.usefixtures("doctor_env")
def test_doctor_fails_an_unsupported_release(release: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    release[0] = "0.4.1"
    line = _doctor_llama_line(capsys)
    assert (
        line
        == f"[FAIL] llama-cpp-python 0.4.1 is not supported (zoe-edge needs {SUPPORTED}): outside the supported range"
    )


# --- the import rule ----------------------------------------------------------------------------


def _imports_llama_cpp(tree: ast.AST) -> list[int]:
    """Lines that import llama_cpp in any form: import, from-import, importlib.import_module, __import__."""
    lines = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(n == "llama_cpp" or n.startswith("llama_cpp.") for n in names):
            lines.append(getattr(node, "lineno", 0))
    return sorted(lines)


def test_only_llama_compat_imports_llama_cpp() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ALLOWED:
            continue
        lines = _imports_llama_cpp(ast.parse(path.read_text(), str(path)))
        offenders += [f"{path.relative_to(REPO)}:{line}" for line in lines]
    assert not offenders, "import llama_cpp only in zoe_edge/worker/llama_compat.py; found it in " + ", ".join(
        offenders
    )


def test_the_import_rule_sees_every_spelling() -> None:
    source = (
        "import llama_cpp\n"
        "from llama_cpp.llama_grammar import X\n"
        "def f():\n    import llama_cpp.llama_chat_format as c\n"
        "importlib.import_module('llama_cpp._internals')\n"
        "__import__('llama_cpp')\n"
        "import llama_cpp_other\nfrom . import llama_cpp\n"
    )
    assert _imports_llama_cpp(ast.parse(source)) == [1, 2, 4, 5, 6]
    assert _imports_llama_cpp(ast.parse(ALLOWED.read_text()))  # the allowed module really is the one
