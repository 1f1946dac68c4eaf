"""The whole registry document and the checks that span its sections (names, targets, aliases)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoe_edge.access.keys import KEY_ID, KeyEntry
from zoe_edge.cache.config import CacheSettings
from zoe_edge.providers.config import ProviderConfig
from zoe_edge.registry.entries import ModelEntry
from zoe_edge.registry.sections import (
    AdmissionSettings,
    AssistSettings,
    AutoRouting,
    DeviceSettings,
    Route,
    SelectTarget,
    ThermalSettings,
    UsageSettings,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


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
        for name, listed in self.models.items():
            listed._name = name
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
