"""The Responses API driven by the official ``openai`` SDK against a real daemon and SmolLM2: plain, tools,
streams, previous_response_id chains, the stored responses per client key, and their survival of a restart."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

ALICE, BOB, PROBE = "zk-responses-alice-0001", "zk-responses-bob-0002", "zk-responses-probe-0003"
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}


class Keyed:
    """The daemon of this module (replaced by the restart test) and where it keeps its state."""

    def __init__(self, tmp: Path, registry: Path) -> None:
        self.tmp, self.registry = tmp, registry
        self.daemon = self.start()

    def start(self) -> Daemon:
        # its own state directory: the responses store lives there (the model file is named by path)
        env = {"ZOE_STATE_DIR": str(self.tmp / "state")}
        return start_daemon(self.registry, self.tmp, env=env, api_key=PROBE)

    def client(self, key: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.daemon.v1, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("responses")
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    data = yaml.safe_load(registry.read_text())
    data["keys"] = {name: {"key": "sha256:" + hashlib.sha256(secret.encode()).hexdigest()}
                    for name, secret in (("alice", ALICE), ("bob", BOB))}
    registry.write_text(yaml.safe_dump(data))
    k = Keyed(tmp, registry)
    yield k
    k.daemon.stop()


@pytest.fixture(scope="module")
def alice(keyed: Keyed) -> openai.OpenAI:
    return keyed.client(ALICE)


def test_plain_response(alice: openai.OpenAI) -> None:
    resp = alice.responses.create(model="zoe-chat", input="Name three colours of the rainbow.", max_output_tokens=16)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == "smollm2-135m"
    assert resp.status in ("completed", "incomplete")
    assert resp.output_text.strip()
    message = resp.output[-1]
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    assert resp.usage is not None
    assert resp.usage.input_tokens > 0 and 0 < resp.usage.output_tokens <= 16
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    if resp.usage.output_tokens == 16:
        assert resp.status == "incomplete" and resp.incomplete_details is not None
        assert resp.incomplete_details.reason == "max_output_tokens"
    # stored by default, retrieved exactly as it was answered
    assert alice.responses.retrieve(resp.id).model_dump() == resp.model_dump()


def test_function_tool_round_trip(alice: openai.OpenAI) -> None:
    first = alice.responses.create(  # type: ignore[call-overload]
        model="zoe-chat",
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    args = json.loads(call.arguments)
    # what the schema asks: an object with a string city and, if any, a unit from the enum
    assert isinstance(args, dict) and isinstance(args["city"], str)
    assert set(args) <= {"city", "unit"} and args.get("unit", "celsius") in ("celsius", "fahrenheit")

    answer = alice.responses.create(
        model="zoe-chat",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 18}'}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=24,
    )
    assert answer.previous_response_id == first.id
    assert answer.output_text.strip(), answer.output
    assert not [item for item in answer.output if item.type == "function_call"]


def test_stream_events_and_final_response(alice: openai.OpenAI) -> None:
    stream = alice.responses.create(model="zoe-chat", input="Say hello.", max_output_tokens=12, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and final.output_text == deltas
    assert alice.responses.retrieve(final.id).output_text == deltas


def test_sdk_stream_helper_assembles_a_structured_answer(alice: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}
    with alice.responses.stream(  # type: ignore[call-overload]
        model="zoe-chat",
        input="Is the light on? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "light", "schema": schema, "strict": True}},
        max_output_tokens=32,
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == deltas
    assert isinstance(json.loads(deltas)["on"], bool)


def test_previous_response_id_sends_the_history(alice: openai.OpenAI) -> None:
    first = alice.responses.create(
        model="zoe-chat", input="My name is Ada and I live in a lighthouse by the sea.", max_output_tokens=8
    )
    question = "What is my name?"
    chained = alice.responses.create(
        model="zoe-chat", input=question, previous_response_id=first.id, max_output_tokens=8
    )
    fresh = alice.responses.create(model="zoe-chat", input=question, max_output_tokens=8, store=False)
    assert chained.usage is not None and fresh.usage is not None and first.usage is not None
    # the first turn's input and output are in the prompt
    assert chained.usage.input_tokens > fresh.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(fresh.id)  # store=False
    items = alice.responses.input_items.list(chained.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]


def test_delete_and_cancel(alice: openai.OpenAI) -> None:
    resp = alice.responses.create(model="zoe-chat", input="Hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        alice.responses.cancel(resp.id)  # finished: only background responses can be cancelled
    alice.responses.delete(resp.id)
    for again in (alice.responses.retrieve, alice.responses.delete):
        with pytest.raises(openai.NotFoundError):
            again(resp.id)


def test_a_response_is_invisible_to_another_key(keyed: Keyed, alice: openai.OpenAI) -> None:
    bob = keyed.client(BOB)
    resp = alice.responses.create(model="zoe-chat", input="A secret for Alice.", max_output_tokens=4)
    for attempt in (
        lambda: bob.responses.retrieve(resp.id),
        lambda: bob.responses.delete(resp.id),
        lambda: bob.responses.input_items.list(resp.id),
        lambda: bob.responses.create(model="zoe-chat", input="Go on.", previous_response_id=resp.id),
        lambda: bob.responses.retrieve("resp_" + "0" * 32),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert "not found" in caught.value.message
    assert alice.responses.retrieve(resp.id).id == resp.id


def test_stored_responses_survive_a_restart(keyed: Keyed, alice: openai.OpenAI) -> None:
    resp = alice.responses.create(model="zoe-chat", input="Remember: the code is 42.", max_output_tokens=6)
    keyed.daemon.stop()
    keyed.daemon = keyed.start()
    again = keyed.client(ALICE)
    assert again.responses.retrieve(resp.id).model_dump() == resp.model_dump()
    chained = again.responses.create(
        model="zoe-chat", input="What is the code?", previous_response_id=resp.id, max_output_tokens=6
    )
    assert chained.previous_response_id == resp.id
    with pytest.raises(openai.NotFoundError):
        keyed.client(BOB).responses.retrieve(resp.id)
