"""The OpenAI paths as Home Assistant's custom integrations use them (Extended OpenAI Conversation, home-llm)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Daemon, start_daemon
from tests.test_ollama_ha import HA_TOOLS, SYSTEM, ha_registry


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("openai-ha")
    d = start_daemon(ha_registry(tmp, smollm_path), tmp)
    yield d
    d.stop()


def test_extended_openai_conversation_pattern(ha: Daemon) -> None:
    """Non-stream, tools with tool_choice auto, `user`, max_tokens 150, results fed back with `name`."""
    client = openai.OpenAI(base_url=ha.v1, api_key="sk-anything", max_retries=0, timeout=120)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Turn off the porch light."},
    ]
    first = client.chat.completions.create(
        model="auto",
        messages=messages,
        tools=HA_TOOLS,
        tool_choice="auto",
        user="ha-user-1",
        max_tokens=150,  # type: ignore[arg-type]
    )
    assert (
        first.usage is not None
        and first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    args = json.loads(call.function.arguments)  # a JSON string, as OpenAI sends it
    assert call.type == "function" and call.id.startswith("call_") and isinstance(args, dict)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": json.dumps({"success": True})}
    )
    final = client.chat.completions.create(
        model="auto",
        messages=messages,
        tools=HA_TOOLS,
        tool_choice="auto",
        user="ha-user-1",
        max_tokens=150,  # type: ignore[arg-type]
    )
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")
    assert final.usage is not None and final.usage.completion_tokens <= 150


def test_home_llm_style_sse_parsing(ha: Daemon) -> None:
    """home-llm reads raw SSE: every chunk is a chat.completion.chunk, calls arrive whole, [DONE] ends it."""
    body = {
        "model": "auto",
        "stream": True,
        "max_tokens": 150,
        "tools": HA_TOOLS,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Turn on the kitchen light"}],
    }
    calls: list[dict[str, Any]] = []
    finish = None
    saw_done = False
    with httpx.stream("POST", ha.v1 + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                saw_done = True
                break
            chunk = json.loads(payload)
            assert chunk["object"] == "chat.completion.chunk"
            for choice in chunk["choices"]:
                for tc in choice["delta"].get("tool_calls") or []:
                    # whole in one delta: id, name and arguments that parse on their own
                    assert tc["id"] and tc["type"] == "function" and tc["function"]["name"]
                    calls.append({"name": tc["function"]["name"], "arguments": json.loads(tc["function"]["arguments"])})
                finish = choice["finish_reason"] or finish
    assert saw_done and finish == "tool_calls"
    assert len(calls) == 1 and calls[0]["name"] in {t["function"]["name"] for t in HA_TOOLS}


def test_models_answer_with_and_without_the_v1_prefix(ha: Daemon) -> None:
    with_prefix = httpx.get(ha.v1 + "/models").json()
    without = httpx.get(ha.url + "/models").json()
    assert with_prefix == without
    assert {"smollm2-135m", "zoe-chat", "zoe-action", "auto"} <= {m["id"] for m in with_prefix["data"]}
