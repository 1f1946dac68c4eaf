"""The Ollama API driven by ``ollama.AsyncClient`` exactly as Home Assistant's integration drives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import yaml

from tests.conftest import REPO, Daemon, smollm_entry, start_daemon, write_registry

# what Home Assistant's llm API sends for a house with lights and a thermostat (trimmed)
HA_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "HassTurnOn",
            "description": "Turns on/opens a device or entity",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "area": {"type": "string"}},
                "required": ["name"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "HassTurnOff",
            "description": "Turns off/closes a device or entity",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "area": {"type": "string"}},
                "required": ["name"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "HassLightSet",
            "description": "Sets the brightness of a light",
            "parameters": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
                },
                "required": ["name", "brightness"],
            },
        },
    },
]
SYSTEM = (
    "You are a voice assistant for Home Assistant. Answer questions about the world truthfully. "
    "When the user asks to control a device, call the matching tool.\n"
    "Devices: kitchen light (light, Kitchen), porch light (light, Porch), thermostat (climate, Hall)."
)


@pytest.fixture(scope="module")
def ha_daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ha")
    d = start_daemon(ha_registry(tmp, smollm_path, ttl="3s"), tmp)
    yield d
    d.stop()


def ha_registry(tmp: Path, smollm_path: Path, **entry: Any) -> Path:
    """SmolLM2 behind the shipped ``auto`` rules: a device command is an action with one forced call."""
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path, **entry)}, {"zoe-chat": "smollm2-135m"})
    shipped = yaml.safe_load((REPO / "models.yaml").read_text())
    data = yaml.safe_load(registry.read_text())
    data["routes"] = {"zoe-action": {"targets": ["smollm2-135m"]}}
    data["auto"] = {**shipped["auto"], "rules": [r for r in shipped["auto"]["rules"] if r["route"] == "zoe-action"]}
    registry.write_text(yaml.safe_dump(data))
    return registry


def client(d: Daemon) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=d.url, timeout=120)


async def test_list_and_ps_as_the_coordinator_polls_them(ha_daemon: Daemon) -> None:
    c = client(ha_daemon)
    installed, loaded = await asyncio.gather(c.list(), c.ps())
    names = {m.model for m in installed.models}
    assert {"smollm2-135m:latest", "zoe-chat:latest"} <= names
    smol = next(m for m in installed.models if m.model == "zoe-chat:latest")
    assert smol.size and smol.size > 90_000_000 and smol.digest and len(smol.digest) == 64
    assert smol.details is not None and smol.details.family == "llama"
    assert smol.details.parameter_size == "135M" and smol.details.quantization_level == "Q4_1"
    assert [m.model for m in loaded.models] == ["smollm2-135m:latest"]
    running = loaded.models[0]
    assert running.size and running.size > smol.size  # weights plus KV cache and buffers
    assert running.size_vram == 0  # CPU only here
    assert running.expires_at is not None and running.context_length == 2048


async def test_ha_tool_loop(ha_daemon: Daemon) -> None:
    """The integration's loop: stream, collect tool calls, feed results back, until a text answer."""
    c = client(ha_daemon)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Turn on the kitchen light."},
    ]
    calls_seen: list[Any] = []
    final: Any = None
    for _iteration in range(10):
        stream = await c.chat(
            model="auto:latest",
            messages=messages,
            tools=HA_TOOLS,
            stream=True,
            keep_alive=-1,
            options={"num_ctx": 8192},
            think=None,
            format=None,
        )
        content, calls = "", []
        async for part in stream:
            if part.message.tool_calls:
                calls.extend(part.message.tool_calls)
            content += part.message.content or ""
            if part.done:
                final = part
        messages.append(
            {
                "role": "assistant",
                "content": content,
                "tool_calls": [
                    {"function": {"name": t.function.name, "arguments": t.function.arguments}} for t in calls
                ]
                or None,
            }
        )
        if not calls:
            break
        calls_seen.extend(calls)
        for call in calls:
            # Home Assistant hands results back as role "tool" messages without ids
            messages.append(
                {"role": "tool", "content": json.dumps({"data": {"success": [call.function.name]}, "error": None})}
            )
    assert len(calls_seen) == 1, calls_seen  # one call for one command, then the spoken answer
    first = calls_seen[0]
    assert first.function.name in {t["function"]["name"] for t in HA_TOOLS}
    arguments = first.function.arguments
    assert isinstance(arguments, dict)  # an object: HA calls .items() on it
    schema = next(t for t in HA_TOOLS if t["function"]["name"] == first.function.name)["function"]["parameters"]
    assert set(schema["required"]) <= set(arguments) <= set(schema["properties"])
    assert all(isinstance(arguments[k], str) for k in ("name", "area") if k in arguments)
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()  # the final answer is text
    assert final is not None and final.done and final.done_reason in ("stop", "length")
    assert final.eval_count and final.eval_count > 0
    assert final.prompt_eval_count and final.prompt_eval_count > 0
    assert final.total_duration and final.eval_duration and final.total_duration >= final.eval_duration


async def test_chat_streams_text_and_matches_non_stream(ha_daemon: Daemon) -> None:
    c = client(ha_daemon)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    opts = {"temperature": 0, "num_predict": 12}
    whole = await c.chat(model="zoe-chat", messages=msgs, stream=False, options=opts)
    parts = [p async for p in await c.chat(model="zoe-chat", messages=msgs, stream=True, options=opts)]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == whole.eval_count <= 12
    assert whole.done_reason in ("stop", "length")


async def test_generate_and_format_json(ha_daemon: Daemon) -> None:
    c = client(ha_daemon)
    out = await c.generate(
        model="zoe-chat", prompt="The capital of France is", raw=True, options={"num_predict": 5, "temperature": 0}
    )
    assert out.response and out.done and out.eval_count == 5 and out.done_reason == "length"
    # format "json": any object, so whether it closes within the budget is up to the model (greedy
    # SmolLM2 lists keys until it is cut off on some CPUs); what the grammar guarantees is an object
    js = await c.generate(
        model="zoe-chat",
        prompt="Describe a cat as JSON with keys name and age.",
        format="json",
        options={"num_predict": 120, "temperature": 0},
    )
    text = (js.response or "").strip()
    assert text.startswith("{")
    if js.done_reason == "stop":
        assert isinstance(json.loads(text), dict)
    # a schema bounds the object: it always closes, and it parses to what the schema says
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "maximum": 30}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    js = await c.generate(
        model="zoe-chat",
        prompt="Describe a cat as JSON with keys name and age.",
        format=schema,
        options={"num_predict": 120, "temperature": 0},
    )
    cat = json.loads(js.response or "")
    assert set(cat) == {"name", "age"} and isinstance(cat["age"], int) and js.done_reason == "stop"


async def test_keep_alive_zero_unloads_and_minus_one_outlives_the_ttl(ha_daemon: Daemon) -> None:
    c = client(ha_daemon)
    out = await c.chat(model="zoe-chat", messages=[], keep_alive=0)
    assert out.done_reason == "unload"
    assert (await c.ps()).models == []
    out = await c.chat(model="zoe-chat", messages=[], keep_alive=-1)
    assert out.done_reason == "load"
    await asyncio.sleep(4.0)  # the registry TTL is 3 s
    assert [m.model for m in (await c.ps()).models] == ["smollm2-135m:latest"]
    await c.chat(model="zoe-chat", messages=[], keep_alive="2s")
    await asyncio.sleep(3.5)
    assert (await c.ps()).models == []


async def test_pull_show_version_and_errors(ha_daemon: Daemon) -> None:
    c = client(ha_daemon)
    assert (await c.pull("zoe-chat:latest")).status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        await c.pull("llama3.2:3b")
    assert err.value.status_code == 404 and "models.yaml" in err.value.error
    shown = await c.show("zoe-chat")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 8192
    with pytest.raises(ollama.ResponseError) as err:
        await c.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    async with httpx.AsyncClient() as h:
        assert (await h.get(ha_daemon.url + "/")).text == "Ollama is running"
        assert (await h.head(ha_daemon.url + "/api/version")).status_code == 200
        r = await h.post(ha_daemon.url + "/api/chat", content=b"{not json")
        assert r.status_code == 400 and set(r.json()) == {"error"}


async def test_embeddings_from_a_chat_only_model_are_a_clear_400_in_both_dialects(ha_daemon: Daemon) -> None:
    """A model whose entry does not say ``embeddings:`` is not asked to embed: the error says how to enable it."""
    with pytest.raises(ollama.ResponseError) as err:
        await client(ha_daemon).embed(model="zoe-chat", input="hello")
    assert err.value.status_code == 400 and "does not serve embeddings" in err.value.error
    async with httpx.AsyncClient() as h:
        r = await h.post(ha_daemon.v1 + "/embeddings", json={"model": "zoe-chat", "input": "hello"})
    assert r.status_code == 400 and "embeddings:" in r.json()["error"]["message"]
