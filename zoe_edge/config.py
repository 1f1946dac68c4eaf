"""Daemon settings: command line first, then ``ZOE_*`` environment variables, then defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd, else the XDG state directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "zoe-edge"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    registry_path: Path = Path("models.yaml")
    state_dir: Path = Field(default_factory=default_state_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    insecure_no_auth: bool = False
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # a worker that has not loaded its model by then is killed and the load reported failed
    load_timeout_s: float = Field(default=300.0, gt=0)
    # no token (or finish) from the worker for this long means it is wedged: kill and replace it
    stall_timeout_s: float = Field(default=120.0, gt=0)
    # this many worker deaths of one model within a minute mean a crash loop: its loads back off (10 s, 20 s...)
    crash_loop_limit: int = Field(default=3, ge=1)
    # text produced faster than this is sent in one chunk per interval (0 = one chunk per token)
    stream_interval_ms: float = Field(default=20.0, ge=0.0, le=1000.0)
    preload: bool = True
    # on SIGTERM, in-flight requests get this long to finish before they are cut
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # overrides the registry's device.profile (simulate a board: "would this fit on a Nano?")
    profile: str | None = None
    # board telemetry (temperatures, power, memory): one sample per interval, 15 minutes kept
    telemetry_interval_s: float = Field(default=1.0, ge=0.1, le=60.0)
    # the usage ledger's SQLite file; None: the registry's usage.path, else <state_dir>/usage.sqlite3
    usage_db: Path | None = None
    # a connection that has not sent a whole request (headers) by then is closed: slowloris, idle sockets
    keepalive_timeout_s: float = Field(default=75.0, gt=0)
    # a request body that has not fully arrived by then is answered 408 (a trickling body holds nothing long)
    body_timeout_s: float = Field(default=30.0, gt=0)
    # browser origins allowed to call the API cross-origin (the dashboard hosted elsewhere); none by default
    cors_origins: list[str] = Field(default_factory=list)

    def check_bind(self, client_keys: bool = False) -> str | None:
        """Why this bind is refused, or ``None``: beyond loopback needs a key or an explicit opt-out.

        ``client_keys``: the registry's ``keys:`` section holds client keys (they count as keys).
        """
        if is_loopback(self.host) or self.api_key is not None or client_keys or self.insecure_no_auth:
            return None
        return (
            f"refusing to listen on {self.host} without an API key: set ZOE_API_KEY (or --api-key-file, "
            "or client keys in the registry's keys: section), "
            "bind to 127.0.0.1, or pass --insecure-no-auth if every client on that network is trusted"
        )
