"""Where each model's GGUF file lives, and assembling the packaged ones on first use."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from pathlib import Path

from zoe_edge.registry.entries import ModelEntry


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
    """Where the model's GGUF file is (or will be, for ``assemble:`` and ``url``); never touches the file.

    A download without a ``file`` lands where assembled models do, ``<state_dir>/models/``, named
    after the registry entry; with a plain ``file`` path it lands there, so the owner can point
    ``file`` at a bigger disk.
    """
    spec = entry.file
    if not spec:  # only a url entry may leave file out (the entry's validator)
        if entry.registry_name is None:
            raise ValueError("a model without 'file' needs its registry name to find its download")
        return state_dir / "models" / f"{entry.registry_name}.gguf"
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
