"""A registry with client keys, prices and cloud routes, shared by the key, ledger and security tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import smollm_entry, write_registry
from tests.fakes.common import FakeReply
from tests.fakes.openai_fake import OpenAIFake

API_KEY = "zk-default-unrestricted-0001"
ADMIN_KEY = "zk-admin-secret-0002"
HA_KEY = "zk-home-assistant-0003"
LIMITED_KEY = "zk-limited-0004"
FILE_KEY = "zk-from-a-file-0005"
METERED_KEY = "zk-metered-0006"
CLOUD_KEY = "sk-test-not-a-real-key"
ALL_SECRETS = (API_KEY, ADMIN_KEY, HA_KEY, LIMITED_KEY, FILE_KEY, METERED_KEY, CLOUD_KEY)
# the fake cloud reports 12 prompt + 7 completion tokens: 12 * 1000 + 7 * 2000 per million = $0.026
CLOUD_COST = 0.026


def keyed_env() -> dict[str, str]:
    return {
        "ZOE_TEST_CLOUD_KEY": CLOUD_KEY,
        "ZOE_TEST_HA_KEY": HA_KEY,
        "ZOE_TEST_METERED_KEY": METERED_KEY,
        "ZOE_ADMIN_KEY": ADMIN_KEY,
    }


def keyed_registry(tmp: Path, smol: Path, cloud_url: str, **extra: Any) -> Path:
    path = write_registry(tmp, {"smol": smollm_entry(smol)}, {"zoe-chat": "smol"}, default="smol")
    data = yaml.safe_load(path.read_text())
    (tmp / "file.key").write_text(FILE_KEY + "\n")
    data["providers"] = {
        "cloud": {
            "type": "openai",
            "base_url": cloud_url,
            "api_key_env": "ZOE_TEST_CLOUD_KEY",
            "retries": 0,
            "cooldown_after": 50,
            "prices": {"gpt-fake": {"input_per_mtok": 1000, "output_per_mtok": 2000}},
        }
    }
    data["routes"] = {
        "cloud-first": {"targets": ["cloud:gpt-fake", "smol"]},
        "cloud-only": {"targets": ["cloud:gpt-fake"]},
    }
    data["keys"] = {
        "ha": {
            "key": "env:ZOE_TEST_HA_KEY",
            "aliases": ["zoe-chat", "cloud-first", "cloud-only"],
            "daily_budget_usd": 0.03,
        },
        "limited": {
            "key": "sha256:" + hashlib.sha256(LIMITED_KEY.encode()).hexdigest(),
            "aliases": ["zoe-chat"],
            "rpm": 2,
        },
        "filed": {"key": "file:file.key", "tpm": 100000},
        "metered": {"key": "env:ZOE_TEST_METERED_KEY", "tpm": 20},
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
async def cloud() -> AsyncIterator[OpenAIFake]:
    """A loopback OpenAI-compatible upstream answering every request with a fixed text."""
    fake = OpenAIFake()
    await fake.start()
    fake.default = FakeReply(text="Hello from the cloud.")
    yield fake
    await fake.close()
