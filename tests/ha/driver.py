"""Drive the REAL Home Assistant core (its own `ollama` integration) against a zoe-edge server.

Run by Home Assistant's interpreter (made by scripts/setup-ha), never imported by our pytest:

    $(scripts/setup-ha | tail -1) tests/ha/driver.py spec.json      # or: driver.py - < spec.json
    $(scripts/setup-ha | tail -1) tests/ha/driver.py --url http://127.0.0.1:8001 \
        --model smollm2-135m:latest "Turn on the kitchen light" "What is the temperature in the living room?"

The spec (JSON): {"url": "http://127.0.0.1:8001", "model": "smollm2-135m:latest",
"turns": ["Turn on the kitchen light", ...], "llm_api": "assist", "language": "en",
"subentry": {...extra subentry options, e.g. "num_ctx": 4096...}, "log_level": "WARNING",
"config_dir": "/path/to/keep"}  (default: a temporary dir, removed at the end).
All turns share one conversation id (HA keeps the history). Only "url", "model" and "turns" are needed.

What it does, as a person would through the UI: starts HomeAssistant in-process in a temporary
config dir (like HA's test harness: no frontend, skip_pip so nothing is installed at run time),
builds a small home (areas Kitchen and Living room; template lights "Kitchen light" and
"Living room lamp" with brightness, a template switch "Coffee maker", a template sensor
"Living room temperature" in °C; their state lives in input_boolean/input_number helpers, which are
not exposed), exposes the four to Assist, runs the ollama config flow with the URL, then the
conversation subentry flow with the model and LLM API "assist" (every other field at the value the
form suggests, as the frontend submits it), then calls conversation.async_converse for each turn.

stdout: one JSON line per phase. First {"event": "setup", ...} (the flow results, agent id),
then one {"event": "turn", ...} per turn with utterance, speech, response_type, error_code,
elapsed_s, states (state + attributes of the fixture entities after the turn), tool_calls (the
calls the model made, as HA parsed them) and tool_results (HA's answers), counted from HA's chat
log subscription. Exit code 0 when setup worked (turn failures are data, not exit codes), 2 when the
integration could not be set up. HA's own log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from typing import Any

from homeassistant import bootstrap, config_entries, core_config, loader
from homeassistant.components import conversation
from homeassistant.components.conversation import chat_log as ha_chat_log
from homeassistant.components.conversation.const import ChatLogEventType
from homeassistant.components.homeassistant import exposed_entities
from homeassistant.components.http import config as http_config
from homeassistant.const import __version__ as HA_VERSION
from homeassistant.core import Context, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component

FIXTURE = ["light.kitchen_light", "light.living_room_lamp", "switch.coffee_maker", "sensor.living_room_temperature"]
ATTRS = ("brightness", "color_mode", "supported_color_modes", "unit_of_measurement", "device_class", "friendly_name")
AREAS = {
    "light.kitchen_light": "Kitchen",
    "light.living_room_lamp": "Living room",
    "sensor.living_room_temperature": "Living room",
}


def out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _light(name: str, uid: str, helper: str) -> dict[str, Any]:
    power, level = f"input_boolean.{helper}_power", f"input_number.{helper}_level"
    return {
        "name": name,
        "unique_id": uid,
        "state": f"{{{{ is_state('{power}', 'on') }}}}",
        "level": f"{{{{ states('{level}') | int(0) }}}}",
        "turn_on": [{"action": "input_boolean.turn_on", "target": {"entity_id": power}}],
        "turn_off": [{"action": "input_boolean.turn_off", "target": {"entity_id": power}}],
        "set_level": [
            {"action": "input_number.set_value", "target": {"entity_id": level}, "data": {"value": "{{ brightness }}"}},
            {"action": "input_boolean.turn_on", "target": {"entity_id": power}},
        ],
    }


def home_config() -> dict[str, Any]:
    return {
        "input_boolean": {
            "kitchen_light_power": {"name": "kitchen light power"},
            "living_room_lamp_power": {"name": "living room lamp power"},
            "coffee_maker_power": {"name": "coffee maker power"},
        },
        "input_number": {
            "kitchen_light_level": {"name": "kitchen light level", "min": 0, "max": 255, "step": 1, "initial": 200},
            "living_room_lamp_level": {
                "name": "living room lamp level",
                "min": 0,
                "max": 255,
                "step": 1,
                "initial": 128,
            },
        },
        "template": [
            {
                "light": [
                    _light("Kitchen light", "zoe_kitchen_light", "kitchen_light"),
                    _light("Living room lamp", "zoe_living_room_lamp", "living_room_lamp"),
                ]
            },
            {
                "switch": [
                    {
                        "name": "Coffee maker",
                        "unique_id": "zoe_coffee_maker",
                        "state": "{{ is_state('input_boolean.coffee_maker_power', 'on') }}",
                        "turn_on": [
                            {
                                "action": "input_boolean.turn_on",
                                "target": {"entity_id": "input_boolean.coffee_maker_power"},
                            }
                        ],
                        "turn_off": [
                            {
                                "action": "input_boolean.turn_off",
                                "target": {"entity_id": "input_boolean.coffee_maker_power"},
                            }
                        ],
                    }
                ]
            },
            {
                "sensor": [
                    {
                        "name": "Living room temperature",
                        "unique_id": "zoe_living_room_temperature",
                        "state": "21.5",
                        "unit_of_measurement": "°C",
                        "device_class": "temperature",
                        "state_class": "measurement",
                    }
                ]
            },
        ],
    }


def states(hass: HomeAssistant) -> dict[str, Any]:
    result = {}
    for entity_id in FIXTURE:
        st = hass.states.get(entity_id)
        result[entity_id] = (
            None if st is None else {"state": st.state, **{k: st.attributes[k] for k in ATTRS if k in st.attributes}}
        )
    return result


def suggested(schema: Any) -> dict[str, Any]:
    """What the frontend submits for an untouched form: defaults and suggested values."""
    values: dict[str, Any] = {}
    for key in schema.schema:
        name = str(key)
        desc = getattr(key, "description", None) or {}
        if "suggested_value" in desc:
            values[name] = desc["suggested_value"]
        else:
            default = getattr(key, "default", None)
            if callable(default):
                with contextlib.suppress(Exception):  # the "no default" marker raises
                    values[name] = default()
    return values


async def run(spec: dict[str, Any], config_dir: str) -> int:
    hass = HomeAssistant(config_dir)
    hass.config.skip_pip = True
    loader.async_setup(hass)
    core = {
        "name": "Zoe test home",
        "latitude": 52.37,
        "longitude": 4.89,
        "elevation": 0,
        "unit_system": "metric",
        "time_zone": "Europe/Amsterdam",
        "currency": "EUR",
        "country": "NL",
        "language": spec.get("language", "en"),
    }
    port = int(spec.get("http_port", 0)) or _free_port()
    config = {"homeassistant": core, "http": {"server_host": "127.0.0.1", "server_port": port}, **home_config()}
    # the order of bootstrap.async_from_config_dict: registries, core integrations, core config
    hass.config_entries = config_entries.ConfigEntries(hass, config)
    await bootstrap.async_load_base_functionality(hass)
    for domain in ("homeassistant", "persistent_notification"):
        await async_setup_component(hass, domain, config)
    await core_config.async_process_ha_core_config(hass, core)
    info: dict[str, Any] = {
        "event": "setup",
        "ha_version": HA_VERSION,
        "python": sys.version.split()[0],
        "config_dir": config_dir,
    }
    try:
        for domain in ("input_boolean", "input_number", "template", "conversation"):
            if not await async_setup_component(hass, domain, config):
                raise RuntimeError(f"setting up {domain} failed")
        await hass.async_start()
        await hass.async_block_till_done()
        # HA 2026.11 stages YAML http config as "pending" and, unless the user confirms it
        # (websocket "http/config/promote"), reverts it after 5 minutes by restarting HA
        http_store = await http_config.async_get_and_load_store(hass)
        if http_store.pending is not None:
            await http_store.async_promote_pending()

        # areas and Assist exposure, as done in Settings > Areas / Voice assistants > Expose
        areas = ar.async_get(hass)
        ents = er.async_get(hass)
        for entity_id, area in AREAS.items():
            area_entry = areas.async_get_area_by_name(area) or areas.async_create(area)
            ents.async_update_entity(entity_id, area_id=area_entry.id)
        for st in hass.states.async_all():
            exposed_entities.async_expose_entity(hass, conversation.DOMAIN, st.entity_id, st.entity_id in FIXTURE)
        info["states"] = states(hass)

        # the ollama integration's own config flow, step "user": the URL
        flow = await hass.config_entries.flow.async_init("ollama", context={"source": "user"})
        result = await hass.config_entries.flow.async_configure(flow["flow_id"], {"url": spec["url"]})
        info["config_flow"] = {k: result.get(k) for k in ("type", "reason", "errors", "title")}
        if result["type"] is not FlowResultType.CREATE_ENTRY:
            raise RuntimeError(f"ollama config flow did not create an entry: {result}")
        entry = result["result"]
        await hass.async_block_till_done()
        info["entry_state"] = str(entry.state)

        # its conversation subentry flow: model + "Control Home Assistant", the rest as suggested
        sub = await hass.config_entries.subentries.async_init(
            (entry.entry_id, "conversation"), context={"source": "user"}
        )
        if sub["type"] is not FlowResultType.FORM:
            raise RuntimeError(f"conversation subentry flow: {sub}")
        form = suggested(sub["data_schema"])
        form.update({"model": spec["model"], "llm_hass_api": [spec.get("llm_api", "assist")]})
        form.update(spec.get("subentry", {}))
        sub = await hass.config_entries.subentries.async_configure(sub["flow_id"], form)
        info["subentry_flow"] = {k: sub.get(k) for k in ("type", "reason", "errors", "title", "step_id", "data")}
        if sub["type"] is not FlowResultType.CREATE_ENTRY:
            raise RuntimeError(f"conversation subentry flow did not create an entry: {sub}")
        await hass.async_block_till_done()
        agent_id = next(
            e.entity_id for e in er.async_entries_for_config_entry(ents, entry.entry_id) if e.domain == "conversation"
        )
        info["agent_id"] = agent_id
        out(info)
    except Exception as err:
        logging.getLogger("zoe.driver").exception("setup failed")
        info["error"] = f"{type(err).__name__}: {err}"
        out(info)
        await hass.async_stop(force=True)
        return 2

    # count what the model asked for and what HA answered, from HA's chat log events
    seen: dict[str, list] = {"tool_calls": [], "tool_results": [], "content": []}

    def on_chat_log(conversation_id: str, event_type: Any, data: dict[str, Any]) -> None:
        if event_type != ChatLogEventType.CONTENT_ADDED:
            return
        content = data.get("content", {})
        seen["content"].append(content.get("role"))
        for call in content.get("tool_calls") or []:
            seen["tool_calls"].append(
                {"tool": getattr(call, "tool_name", None), "args": getattr(call, "tool_args", None)}
            )
        if content.get("role") == "tool_result":
            res = content.get("result") or {}
            seen["tool_results"].append({"tool": content.get("tool_name"), "result": res.get("data", res)})

    ha_chat_log.async_subscribe_chat_logs(hass, on_chat_log)

    conversation_id = None
    for text in spec["turns"]:
        for v in seen.values():
            v.clear()
        started = time.monotonic()
        turn: dict[str, Any] = {"event": "turn", "utterance": text}
        try:
            res = await conversation.async_converse(
                hass, text, conversation_id, Context(), language=spec.get("language", "en"), agent_id=agent_id
            )
            await hass.async_block_till_done()
            resp = res.response
            conversation_id = res.conversation_id
            turn.update(
                speech=resp.speech.get("plain", {}).get("speech"),
                response_type=str(resp.response_type.value),
                error_code=resp.error_code.value if resp.error_code else None,
                continue_conversation=res.continue_conversation,
            )
        except Exception as err:
            turn.update(speech=None, response_type="exception", error_code=f"{type(err).__name__}: {err}")
        turn["elapsed_s"] = round(time.monotonic() - started, 3)
        turn["conversation_id"] = conversation_id
        turn["states"] = states(hass)
        turn["tool_calls"] = list(seen["tool_calls"])
        turn["n_tool_calls"] = len(seen["tool_calls"])
        turn["tool_results"] = list(seen["tool_results"])
        turn["chat_log_roles"] = list(seen["content"])
        out(turn)

    await hass.async_stop()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", help="JSON spec file, or - for stdin")
    ap.add_argument("turns", nargs="*", help="utterances (with --url/--model instead of a spec)")
    ap.add_argument("--url")
    ap.add_argument("--model")
    ap.add_argument("--log-level", default=None)
    args = ap.parse_args()
    if args.url:
        spec = {"url": args.url, "model": args.model, "turns": ([args.spec] if args.spec else []) + args.turns}
    elif args.spec:
        if args.spec == "-":
            spec = json.load(sys.stdin)
        else:
            with open(args.spec) as f:
                spec = json.load(f)
    else:
        ap.error("give a spec file or --url/--model and turns")
    if not spec.get("model") or not spec.get("url"):
        ap.error("the spec needs url and model")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level or spec.get("log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config_dir = spec.get("config_dir") or tempfile.mkdtemp(prefix="zoe-ha-")
    try:
        return asyncio.run(run(spec, config_dir))
    finally:
        if not spec.get("config_dir"):
            shutil.rmtree(config_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
