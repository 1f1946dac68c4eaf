"""Conversations for the real Home Assistant (tests/ha/driver.py) and how each turn is graded.

Runs under the project's own Python: it starts the driver under Home Assistant's interpreter
(scripts/setup-ha) as a subprocess and reads its JSON lines. Shared by the test
(tests/test_home_assistant_real.py) and the bench (bench/ha_real.py), so both grade alike.

A turn is graded by what Home Assistant did, never by what the model wrote:
* a command is right when exactly the entities it names changed, to the wanted state;
* a state question is true when the spoken answer states the entity's real state (read from Home
  Assistant itself) and not its opposite;
* a loop is a call repeated with the same arguments in one turn, or three calls or more;
* an error is a turn Home Assistant answered with an error or an exception.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "ha" / "driver.py"
OPPOSITE = {"on": "off", "off": "on"}


@dataclass(frozen=True)
class Turn:
    text: str
    kind: str  # command | question | chat
    # command: entity id -> the attributes it must have afterwards (and nothing else may change)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    about: str | None = None  # question: the entity whose state the answer must state


def command(text: str, **changes: dict[str, Any]) -> Turn:
    return Turn(text, "command", {k.replace("__", "."): v for k, v in changes.items()})


def question(text: str, entity_id: str) -> Turn:
    return Turn(text, "question", about=entity_id)


def chat(text: str) -> Turn:
    return Turn(text, "chat")


# every turn of the test's conversation; the fixture home starts with everything off
CONVERSATION: list[Turn] = [
    command("Turn on the kitchen light", light__kitchen_light={"state": "on"}),
    question("Is the kitchen light on?", "light.kitchen_light"),
    command("Set the living room lamp to 50%", light__living_room_lamp={"state": "on", "brightness": 128}),
    command("Turn off the kitchen light", light__kitchen_light={"state": "off"}),
    question("Is the kitchen light on?", "light.kitchen_light"),
    command("Switch on the coffee maker", switch__coffee_maker={"state": "on"}),
    question("What is the temperature in the living room?", "sensor.living_room_temperature"),
    chat("Hello, who are you?"),
]

# the bench's longer conversation: more phrasings of the same kinds
BENCH_CONVERSATION: list[Turn] = [
    *CONVERSATION,
    command("Please turn the living room lamp off", light__living_room_lamp={"state": "off"}),
    question("Is the living room lamp on?", "light.living_room_lamp"),
    command("Dim the kitchen light to 20 percent", light__kitchen_light={"state": "on", "brightness": 51}),
    command("switch the coffee maker off", switch__coffee_maker={"state": "off"}),
    question("Is the coffee maker on?", "switch.coffee_maker"),
    command("Could you turn on the living room lamp?", light__living_room_lamp={"state": "on"}),
    question("Is the kitchen light off?", "light.kitchen_light"),
    command("Turn off the living room lamp", light__living_room_lamp={"state": "off"}),
    question("What's the living room temperature?", "sensor.living_room_temperature"),
    chat("Tell me a joke"),
]


def run_driver(ha_python: str, url: str, model: str, turns: list[Turn], timeout: float) -> list[dict[str, Any]]:
    """The driver's JSON lines: ``[setup, turn, turn, ...]``; raises with HA's log when setup failed."""
    spec = {"url": url, "model": model, "turns": [t.text for t in turns]}
    proc = subprocess.run(
        [ha_python, str(DRIVER), "-"], input=json.dumps(spec), capture_output=True, text=True, timeout=timeout
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines or lines[0].get("event") != "setup" or "error" in lines[0]:
        raise AssertionError(f"Home Assistant driver failed ({proc.returncode}): {lines[:1]}\n{proc.stderr[-4000:]}")
    return lines


@dataclass
class Verdict:
    turn: Turn
    ok: bool
    why: str
    loop: bool
    error: bool
    elapsed_s: float
    speech: str


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    keys = ("state", "brightness")
    return {e for e in after if any(before.get(e, {}).get(k) != after[e].get(k) for k in keys)}


def _has(speech: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", speech, re.IGNORECASE) is not None


def truthful(question_text: str, speech: str, state: str) -> tuple[bool, str]:
    """Whether ``speech`` states ``state`` (and not the opposite one), and a yes/no agrees with it."""
    if not _has(speech, state):
        return False, f"the answer does not say {state!r}"
    other = OPPOSITE.get(state)
    if other is not None and _has(speech, other):
        return False, f"the answer says both {state!r} and {other!r}"
    asked = next((w for w in OPPOSITE if _has(question_text, w)), None)
    yes_no = re.match(r"\W*(yes|no)\b", speech, re.IGNORECASE)
    if asked is not None and yes_no is not None and (yes_no.group(1).lower() == "yes") != (state == asked):
        return False, f"answered {yes_no.group(1)!r} to 'is it {asked}?' while it is {state!r}"
    return True, f"states {state!r}"


def grade(turns: list[Turn], lines: list[dict[str, Any]]) -> list[Verdict]:
    setup, results = lines[0], lines[1:]
    before: dict[str, Any] = setup["states"]
    out: list[Verdict] = []
    for turn, result in zip(turns, results, strict=True):
        after: dict[str, Any] = result["states"]
        speech = str(result.get("speech") or "")
        calls = [json.dumps([c.get("tool"), c.get("args")], sort_keys=True) for c in result.get("tool_calls", [])]
        loop = len(calls) >= 3 or len(set(calls)) < len(calls)
        error = result.get("response_type") in ("error", "exception") or result.get("error_code") is not None
        changed = _changed(before, after)
        if turn.kind == "command":
            wrong = [
                f"{e}.{k} is {after.get(e, {}).get(k)!r}, wanted {v!r}"
                for e, attrs in turn.changes.items()
                for k, v in attrs.items()
                if not (after.get(e, {}).get(k) == v or (k == "brightness" and abs((after[e].get(k) or -9) - v) <= 2))
            ]
            extra = changed - set(turn.changes)
            ok = not wrong and not extra
            why = "; ".join(wrong + [f"{e} changed too" for e in sorted(extra)]) or "exactly the right change"
        elif turn.kind == "question":
            assert turn.about is not None
            ok, why = truthful(turn.text, speech, str(after[turn.about]["state"]))
            if changed:
                ok, why = False, f"a question changed {sorted(changed)}"
        else:
            ok = not changed and not calls
            why = "no call, no change" if ok else f"chit-chat made calls {calls} / changed {sorted(changed)}"
        out.append(Verdict(turn, ok and not error and not loop, why, loop, error, float(result["elapsed_s"]), speech))
        before = after
    return out
