"""The pure parts of embeddings: registry fields, input checks, base64, Matryoshka shortening."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from zoe_edge.api.openai.embeddings import EmbeddingsRequest, encode
from zoe_edge.errors import InvalidRequest
from zoe_edge.registry.entries import ModelEntry
from zoe_edge.service.gateway import shorten


@pytest.mark.parametrize(
    ("value", "generates", "embeds"), [(False, True, False), (True, False, True), ("also", True, True)]
)
def test_entry_embeddings_modes(value: object, generates: bool, embeds: bool) -> None:
    entry = ModelEntry.model_validate({"file": "m.gguf", "embeddings": value})
    assert (entry.generates, entry.embeds) == (generates, embeds)


def test_entry_refuses_unknown_modes() -> None:
    with pytest.raises(ValueError):
        ModelEntry.model_validate({"file": "m.gguf", "embeddings": "sometimes"})
    with pytest.raises(ValueError):
        ModelEntry.model_validate({"file": "m.gguf", "pooling": "max"})


def test_base64_is_little_endian_float32() -> None:
    vector = [0.5, -1.25, 3.0]
    raw = encode(vector, "base64")
    assert isinstance(raw, str)
    assert list(struct.unpack("<3f", base64.b64decode(raw))) == vector
    assert encode(vector, "float") == vector


def test_shorten_renormalises() -> None:
    out = shorten([3.0, 4.0, 12.0], 2)
    assert out == pytest.approx([0.6, 0.8]) and math.isclose(sum(x * x for x in out), 1.0)


@pytest.mark.parametrize(
    ("value", "param"),
    [(None, "input"), ([], "input"), ([[1, 2]], "input"), ([5], "input"), (["a", ""], "input[1]"), ([{}], "input[0]")],
)
def test_input_checks(value: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        EmbeddingsRequest(model="m", input=value).texts()
    assert err.value.param == param


def test_input_string_or_list() -> None:
    assert EmbeddingsRequest(model="m", input="hi").texts() == ["hi"]
    assert EmbeddingsRequest(model="m", input=["a", "b"]).texts() == ["a", "b"]
