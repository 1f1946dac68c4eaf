"""GGUF header facts from the real SmolLM2 file, and clear errors for files that are not models."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoe_edge.gguf_info import GGUFError, GGUFInfo, read_gguf


@pytest.fixture(scope="module")
def smollm_info(smollm_gguf: Path) -> GGUFInfo:
    return read_gguf(smollm_gguf)  # ~2 s: the tokenizer arrays are large; read once per module


@pytest.fixture(scope="module")
def truncated_error(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("gguf") / "half.gguf"
    with smollm_gguf.open("rb") as src:
        path.write_bytes(src.read(smollm_gguf.stat().st_size // 2))
    with pytest.raises(GGUFError) as caught:
        read_gguf(path)
    return path, str(caught.value)


def test_smollm_header(smollm_info: GGUFInfo, smollm_gguf: Path) -> None:
    assert smollm_info.architecture == "llama"
    assert smollm_info.n_layers == 30
    assert smollm_info.n_heads == 9
    assert smollm_info.n_kv_heads == 3
    assert smollm_info.embedding_length == 576
    assert smollm_info.head_dim == 64
    assert smollm_info.context_length == 8192
    assert smollm_info.file_type == "Q4_1"
    assert smollm_info.has_chat_template is True
    assert smollm_info.size_bytes == smollm_gguf.stat().st_size
    assert smollm_info.path == str(smollm_gguf)


def test_smollm_parameter_count(smollm_info: GGUFInfo) -> None:
    assert 130_000_000 < smollm_info.n_params < 140_000_000
    assert smollm_info.parameter_size == "135M"


def test_read_is_cached(smollm_info: GGUFInfo, smollm_gguf: Path) -> None:
    assert read_gguf(smollm_gguf) is smollm_info


@pytest.mark.parametrize(
    ("n_params", "label"),
    [
        (134_515_008, "135M"),
        (268_098_176, "268M"),
        (321_000_000, "321M"),
        (1_000_000_000, "1.0B"),
        (3_210_000_000, "3.2B"),
    ],
)
def test_parameter_size_label(smollm_info: GGUFInfo, n_params: int, label: str) -> None:
    from dataclasses import replace

    assert replace(smollm_info, n_params=n_params).parameter_size == label


def test_truncated_file(truncated_error: tuple[Path, str]) -> None:
    path, message = truncated_error
    assert str(path) in message
    assert "truncated" in message or "corrupt" in message


def test_truncated_file_says_truncated(truncated_error: tuple[Path, str]) -> None:
    _, message = truncated_error
    assert "truncated" in message, message


@pytest.mark.parametrize(
    "content", [b"not a model at all", b"", b"GG", b"PK\x03\x04zipfile"], ids=["text", "empty", "short", "zip"]
)
def test_not_a_gguf_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match="not a GGUF file") as caught:
        read_gguf(path)
    assert "GGUF" in str(caught.value)
    assert str(path) in str(caught.value)


def test_gguf_magic_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(GGUFError, match="corrupt"):
        read_gguf(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(GGUFError, match="does not exist") as caught:
        read_gguf(path)
    assert str(path) in str(caught.value)


def test_directory_is_not_readable_as_model(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot be read"):
        read_gguf(tmp_path)
