"""``models.yaml``: the schema, loading with readable errors, and where each model's file lives.

The registry is the only place that names models. A model's ``file`` is one of

* an absolute path, or a path relative to the registry file;
* ``pkg:<module>/<path>``: a file shipped inside an installed Python package (works offline);
* ``assemble:<module>``: a package whose ``assemble(path)`` writes the GGUF from chunk packages;
  the result goes to ``<state_dir>/models/`` the first time it is needed.

A model may also name a ``url`` (``https://...`` or ``hf:owner/repo/path/file.gguf``) and its
``sha256``: ``zoe-edge pull`` downloads it to ``file`` when that is a plain path, else to
``<state_dir>/models/<name>.gguf``.

Modules: :mod:`.units` (sizes, durations), :mod:`.entries` (one model), :mod:`.sections` (device,
routes, ...), :mod:`.schema` (the document), :mod:`.load` (reading it), :mod:`.files` (model files).
"""

from __future__ import annotations

from zoe_edge.registry.entries import ModelEntry, Score, SuiteRecord
from zoe_edge.registry.files import ensure_model_file, model_path
from zoe_edge.registry.load import load_registry, parse_registry
from zoe_edge.registry.schema import Registry
from zoe_edge.registry.sections import (
    AdmissionSettings,
    AssistSettings,
    AutoRouting,
    AutoRule,
    DeviceSettings,
    Route,
    RouteParams,
    SelectRule,
    SelectTarget,
    ThermalSettings,
    ToolChoicePolicy,
    UsageSettings,
)
from zoe_edge.registry.units import parse_duration, parse_size

__all__ = [
    "AdmissionSettings",
    "AssistSettings",
    "AutoRouting",
    "AutoRule",
    "DeviceSettings",
    "ModelEntry",
    "Registry",
    "Route",
    "RouteParams",
    "Score",
    "SelectRule",
    "SelectTarget",
    "SuiteRecord",
    "ThermalSettings",
    "ToolChoicePolicy",
    "UsageSettings",
    "ensure_model_file",
    "load_registry",
    "model_path",
    "parse_duration",
    "parse_registry",
    "parse_size",
]
