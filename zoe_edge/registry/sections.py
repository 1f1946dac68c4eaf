"""The registry's other sections: device, thermal, assist, admission, routes, auto routing, usage."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoe_edge.cache.config import RouteCacheMode
from zoe_edge.canonical import Priority, Sampling
from zoe_edge.registry.units import parse_duration

_METRIC = re.compile(r"^[a-z_]+\.[a-z0-9_]+$")


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
    # the longest a queued request waits while higher priorities are served before it goes next
    starvation: float = 30.0
    # an interactive request may suspend a background generation between two tokens
    suspend: bool = True

    @field_validator("deadline", "min_residency", "starvation", mode="before")
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
    # who waits for whom on the local slot; beats the key's priority, so one key can send voice turns and
    # automations apart by the route each names (zoe_edge.routing.priority)
    priority: Priority | None = None

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
