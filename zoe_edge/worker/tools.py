"""Tool calling for local models: formats, prompting, the call grammar and the parsers.

Pure functions over plain data, testable without a model. A *format* is the syntax a model emits
a call in:

* ``hermes`` (Hermes, Qwen): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
* ``llama3``: a bare ``{"name": ..., "parameters": {...}}`` object
* ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]``
* ``generic``: a bare ``{"name": ..., "arguments": {...}}`` object, taught by our own system block

A model whose chat template renders ``tools`` itself gets the tools through its template
(*native*); any other gets :func:`system_block`. Output is constrained by :func:`call_grammar`,
which the engine applies from the first token (``required``, a named tool) or from the moment a
:class:`Trigger` appears in free text (``auto``): a lazy grammar, so text stays free and a call,
once begun, can only be a valid one.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal, get_args

from zoe_edge.canonical import Message, Tool, ToolChoice
from zoe_edge.worker.grammar import Converter, InvalidSchema, Lowered, lower_schema, note_degraded, validate

ToolFormat = Literal["hermes", "llama3", "mistral", "generic"]
TOOL_FORMATS: tuple[str, ...] = get_args(ToolFormat)

# a bound on calls in one answer: a small model in a loop would otherwise fill max_tokens with calls
MAX_CALLS = 4
# a bound on argument strings that have no maxLength, for the same reason: a small model can loop
# inside a string ("90 percent brighter, 90 percent brighter, ...") until max_tokens cuts the call in
# half. Device names, areas and places are far shorter; a schema's own maxLength overrides it.
MAX_ARGUMENT_STRING = 128
# the same for arrays without maxItems: a small model listing domains ("light", "switch", "light",
# ...) never closes the bracket. A schema's own maxItems overrides it.
MAX_ARGUMENT_ITEMS = 16

_ARGS_KEY: dict[str, str] = {
    "hermes": "arguments",
    "llama3": "parameters",
    "mistral": "arguments",
    "generic": "arguments",
}


# call markers that some vocabularies hold as control tokens
MARKERS = frozenset({"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"})


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# --- which format -------------------------------------------------------------------------------


def template_uses_tools(template: str) -> bool:
    """Whether a Jinja chat template reads a ``tools`` variable (and so renders tools itself)."""
    import jinja2
    import jinja2.meta

    from zoe_edge.worker.llama_compat import generation_tags_extension

    env = jinja2.Environment(extensions=[generation_tags_extension(), "jinja2.ext.loopcontrols"])
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(env.parse(template))
    except jinja2.TemplateError:
        return False


def detect_format(template: str) -> ToolFormat | None:
    """The call syntax a tool-aware template teaches its model, when it is one we can parse."""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or ("ipython" in template and "parameters" in template):
        return "llama3"
    return None


@dataclass(frozen=True)
class ToolSetup:
    """How one loaded model does tools: its call syntax, and whether its template renders the tools."""

    format: ToolFormat
    native: bool
    reason: str


def resolve_setup(configured: str, template: str) -> ToolSetup:
    """Decide the format from the registry's ``tool_format`` and the model's chat template."""
    uses = template_uses_tools(template)
    detected = detect_format(template) if uses else None
    if configured == "generic":
        return ToolSetup("generic", False, "tool_format: generic in the registry")
    if configured == "auto":
        if detected is not None:
            return ToolSetup(detected, True, f"the chat template renders tools in the {detected} format")
        why = "renders tools in a format we do not know" if uses else "does not render tools"
        return ToolSetup("generic", False, f"the chat template {why}; using the generic system block")
    fmt: ToolFormat = configured  # type: ignore[assignment]
    native = uses and detected in (None, fmt)
    how = "through the chat template" if native else "through the system block"
    return ToolSetup(fmt, native, f"tool_format: {fmt} in the registry, {how}")


# --- prompting ----------------------------------------------------------------------------------


def openai_tool(tool: Tool) -> dict[str, Any]:
    """The shape chat templates expect in their ``tools`` variable (the HF/OpenAI convention)."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _call_object(name: str, arguments: dict[str, Any], fmt: ToolFormat) -> dict[str, Any]:
    return {"name": name, _ARGS_KEY[fmt]: arguments}


def render_calls(calls: list[tuple[str, dict[str, Any]]], fmt: ToolFormat) -> str:
    """Calls written exactly as the format emits them (for history the template cannot render)."""
    objs = [json.dumps(_call_object(name, args, fmt), ensure_ascii=False) for name, args in calls]
    if fmt == "hermes":
        return "\n".join(f"<tool_call>\n{o}\n</tool_call>" for o in objs)
    if fmt == "mistral":
        return "[TOOL_CALLS][" + ", ".join(objs) + "]"
    return "\n".join(objs)


_SYNTAX: dict[str, str] = {
    "hermes": '<tool_call>\n{"name": "<function name>", "arguments": {<arguments>}}\n</tool_call>',
    "llama3": '{"name": "<function name>", "parameters": {<arguments>}}',
    "mistral": '[TOOL_CALLS][{"name": "<function name>", "arguments": {<arguments>}}]',
    "generic": '{"name": "<function name>", "arguments": {<arguments>}}',
}


def system_block(tools: list[Tool], fmt: ToolFormat, choice: ToolChoice) -> str:
    """The tool-use instructions for a model whose template does not render tools."""
    lines = ["You can call the following functions. Each is given as a JSON schema of its arguments:"]
    for tool in tools:
        lines.append(json.dumps(openai_tool(tool)["function"], ensure_ascii=False))
    lines.append("")
    lines.append(f"To call a function, reply with only this, and no other text:\n{_SYNTAX[fmt]}")
    if choice.mode == "function":
        lines.append(f"You must call the function {choice.name}.")
    elif choice.mode == "required":
        lines.append("You must call one of the functions.")
    else:
        lines.append("If no function fits, answer the user in plain text.")
    return "\n".join(lines)


def _tool_names_by_id(messages: list[Message]) -> dict[str, str]:
    return {c.id: c.name for m in messages for c in (m.tool_calls or []) if c.id}


def chat_messages(
    messages: list[Message], tools: list[Tool], choice: ToolChoice, setup: ToolSetup
) -> list[dict[str, Any]]:
    """Messages as dicts for the chat template, with calls and results in a form it can render.

    ``tools`` is what the model may call now (empty when tool_choice is ``none``); the history may
    hold calls and results either way.
    """
    names = _tool_names_by_id(messages)
    if setup.native:
        out = []
        for m in messages:
            d: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in m.tool_calls
                ]
            if m.role == "tool":
                d["tool_call_id"] = m.tool_call_id or ""
                d["name"] = m.name or names.get(m.tool_call_id or "", "")
            elif m.name:
                d["name"] = m.name
            out.append(d)
        return out

    out = []
    for m in messages:
        if m.role == "tool":
            name = m.name or names.get(m.tool_call_id or "", "the function")
            if setup.format == "hermes":
                text = f"<tool_response>\n{m.content}\n</tool_response>"
            else:
                text = f"Result of {name}: {m.content}"
            # results become user turns: templates without tool support often reject a "tool" role,
            # and several results in a row are one turn so that strict alternation holds
            if out and out[-1]["role"] == "user" and out[-1].get("_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_results": True})
            continue
        content = m.content
        if m.role == "assistant" and m.tool_calls:
            calls = render_calls([(c.name, c.arguments) for c in m.tool_calls], setup.format)
            content = f"{content}\n{calls}" if content.strip() else calls
        out.append({"role": m.role, "content": content})
    for d in out:
        d.pop("_results", None)
    if tools:
        block = system_block(tools, setup.format, choice)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"].strip() else block
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


# --- the call grammar -----------------------------------------------------------------------------


def call_grammar(tools: list[Tool], fmt: ToolFormat, parallel: bool, only: str | None = None) -> str:
    """GBNF whose root is one call (or up to :data:`MAX_CALLS`) to ``tools`` with schema-valid arguments.

    Every valid JSON Schema is accepted. What the grammar cannot enforce (``not``, ``uniqueItems``,
    ...) degrades: it is logged once per process (:func:`grammar.note_degraded`), the grammar
    lets the model write it, and :func:`call_problems` checks the parsed call against the
    tool's original schema (a call that fails goes out as text, like any invalid call).
    Arguments are always an object, whatever the schema says. Raises
    :class:`~zoe_edge.worker.grammar.InvalidSchema` (with the tool's name in each path) for
    parameters that are not a JSON Schema at all.
    """
    chosen = [t for t in tools if only is None or t.name == only]
    if not chosen:
        raise ValueError(f"no tool named {only!r}")
    problems: list[str] = []
    params: list[Lowered] = []
    for i, tool in enumerate(chosen):
        try:
            params.append(lower_schema(tool.parameters, prefix=f"tool{i}-", require_object=True))
        except InvalidSchema as exc:
            problems += [f"tool {tool.name}: {p}" for p in exc.features]
    if problems:
        raise InvalidSchema(problems)

    key = _ARGS_KEY[fmt]
    conv = Converter(prop_order=["name", key], max_string=MAX_ARGUMENT_STRING, max_items=MAX_ARGUMENT_ITEMS)
    alternatives = []
    for i, (tool, lowered) in enumerate(zip(chosen, params, strict=True)):
        note_degraded(lowered.notes, f"tool {tool.name}: ")
        conv.add_defs(lowered.defs)
        call = {
            "type": "object",
            "properties": {"name": {"enum": [tool.name]}, key: lowered.core},
            "required": ["name", key],
        }
        alternatives.append(conv.visit(call, f"call{i}"))
    conv.add_rule("call", " | ".join(alternatives))
    more = MAX_CALLS - 1 if parallel else 0
    if fmt == "hermes":
        conv.add_rule("tool-call", '"<tool_call>" "\\n"? call "\\n"? "</tool_call>"')
        conv.add_rule("root", f'tool-call ("\\n" tool-call){{0,{more}}}' if more else "tool-call")
    elif fmt == "mistral":
        tail = f' ("," space call){{0,{more}}}' if more else ""
        conv.add_rule("root", f'"[TOOL_CALLS]" "[" call{tail} "]"')
    elif fmt == "llama3":
        conv.add_rule("root", "call")  # Llama 3 emits one call per turn
    else:
        conv.add_rule("root", f'call ("\\n" call){{0,{more}}}' if more else "call")
    return conv.grammar()


@dataclass(frozen=True)
class Trigger:
    """Text that opens a call: ``at_start`` ones count only as the first non-blank output."""

    literal: str
    at_start: bool


def triggers(fmt: ToolFormat) -> list[Trigger]:
    if fmt == "hermes":
        return [Trigger("<tool_call>", False)]
    if fmt == "mistral":
        return [Trigger("[TOOL_CALLS]", False)]
    # a JSON call is the whole answer; a brace later in prose is just prose
    return [Trigger("{", True)]


def find_trigger(text: str, trigs: list[Trigger]) -> int | None:
    """Offset where a call begins in ``text``, or ``None``."""
    hits = []
    for trig in trigs:
        if trig.at_start:
            body = text.lstrip()
            if body.startswith(trig.literal):
                hits.append(len(text) - len(body))
        else:
            at = text.find(trig.literal)
            if at >= 0:
                hits.append(at)
    return min(hits) if hits else None


def trigger_holdback(text: str, trigs: list[Trigger]) -> int:
    """Trailing characters to hold back because they could still become a trigger.

    Leading blank text is held too: blank lines before a call are not content.
    """
    if not text.strip():
        return len(text)
    keep = 0
    for trig in trigs:
        if trig.at_start:
            continue
        for n in range(min(len(trig.literal) - 1, len(text)), keep, -1):
            if text.endswith(trig.literal[:n]):
                keep = n
                break
    return keep


# --- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Parsed:
    """Text around the calls (``content``) and the calls, in order."""

    content: str
    calls: list[ParsedCall]


def _call_from(obj: Any) -> ParsedCall | None:
    """One call from a decoded JSON value in any of the common shapes, else ``None``."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        obj = obj["function"]
    elif isinstance(obj.get("tool_call"), dict):  # llama.cpp's generic shape
        obj = obj["tool_call"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters"))
    if not isinstance(name, str) or not name:
        return None
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):  # deep nesting is malformed too
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(name, args)


def _json_values(text: str) -> list[Any] | None:
    """Consecutive JSON values separated by blanks, commas or semicolons; ``None`` if anything else."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n,;":
            i += 1
        if i >= n:
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):  # deep nesting is malformed too
            return None
        values.append(value)


def _calls_from_values(values: list[Any]) -> list[ParsedCall] | None:
    calls = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            call = _call_from(item)
            if call is None:
                return None
            calls.append(call)
    return calls or None


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json(text: str) -> Parsed | None:
    """Bare JSON: one call object, an array of them, or several separated by newlines."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("{", "[")):
        return None
    values = _json_values(body)
    calls = _calls_from_values(values) if values else None
    return Parsed("", calls) if calls else None


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> Parsed | None:
    """``<tool_call>{...}</tool_call>`` blocks anywhere in the text; the rest is content."""
    if "<tool_call>" not in text:
        return None
    calls = []
    for match in _HERMES.finditer(text):
        values = _json_values(match.group(1))
        found = _calls_from_values(values) if values else None
        if found is None:
            return None  # one broken block makes the whole answer text, not half a result
        calls += found
    content = _HERMES.sub("", text).strip()
    return Parsed(content, calls) if calls else None


def parse_llama3(text: str) -> Parsed | None:
    """Llama 3.x: an optional ``<|python_tag|>`` then ``{"name", "parameters"}`` object(s)."""
    body = text.strip().removeprefix("<|python_tag|>")
    return parse_json(body)


_MISTRAL_V11 = re.compile(r"\[TOOL_CALLS\]([A-Za-z0-9_.-]+)\[ARGS\]")


def parse_mistral(text: str) -> Parsed | None:
    """``[TOOL_CALLS][{...}, ...]``, or the newer ``[TOOL_CALLS]name[ARGS]{...}`` form."""
    at = text.find("[TOOL_CALLS]")
    if at < 0:
        return None
    content, rest = text[:at].strip(), text[at:]
    if _MISTRAL_V11.match(rest):
        calls = []
        pieces = _MISTRAL_V11.split(rest)[1:]  # name, args, name, args, ...
        for name, args_text in zip(pieces[::2], pieces[1::2], strict=True):
            values = _json_values(args_text)
            if not values or len(values) != 1 or not isinstance(values[0], dict):
                return None
            calls.append(ParsedCall(name, values[0]))
        return Parsed(content, calls)
    values = _json_values(rest.removeprefix("[TOOL_CALLS]"))
    found = _calls_from_values(values) if values else None
    return Parsed(content, found) if found else None


_PARSERS = {"hermes": parse_hermes, "llama3": parse_llama3, "mistral": parse_mistral, "generic": parse_json}


def parse(text: str, fmt: ToolFormat) -> Parsed | None:
    """Calls in a model's answer, trying its own format first; ``None`` means the answer is text."""
    order = [fmt, *(f for f in TOOL_FORMATS if f != fmt)]
    for name in order:
        parsed = _PARSERS[name](text)
        if parsed is not None:
            return parsed
    return None


def call_problems(calls: list[ParsedCall], tools: list[Tool], only: str | None = None) -> list[str]:
    """Why these calls are not acceptable answers (unknown tool, arguments not matching the schema)."""
    by_name = {t.name: t for t in tools}
    problems = []
    for call in calls:
        tool = by_name.get(call.name)
        if tool is None or (only is not None and call.name != only):
            problems.append(f"{call.name}: not an offered tool")
            continue
        problems += [f"{call.name}: {p}" for p in validate(call.arguments, tool.parameters)]
    return problems
