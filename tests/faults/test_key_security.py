"""Keys as a security boundary: admin endpoints refuse client keys, and no key ever leaves the daemon
(logs at debug level, /admin output, /metrics, error bodies)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx

from tests.conftest import start_daemon
from tests.fakes.openai_fake import OpenAIFake
from tests.keyed import (
    ADMIN_KEY,
    ALL_SECRETS,
    API_KEY,
    FILE_KEY,
    HA_KEY,
    LIMITED_KEY,
    bearer,
    keyed_env,
    keyed_registry,
)

WRONG = "zk-presented-but-wrong-0099"
HI = [{"role": "user", "content": "Say hi."}]


async def test_admin_refuses_client_keys_and_no_key_leaks(tmp_path: Path, smollm_path: Path, cloud: OpenAIFake) -> None:
    reg = keyed_registry(tmp_path, smollm_path, cloud.url)
    d = start_daemon(reg, tmp_path, "--log-level", "debug", env=keyed_env(), api_key=API_KEY)
    seen: list[str] = []  # every body the daemon sent back
    try:
        async with httpx.AsyncClient(base_url=d.url, timeout=120) as http:

            async def call(method: str, path: str, headers: dict[str, str], **kw: object) -> httpx.Response:
                r = await http.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
                seen.append(r.text)
                seen.extend(f"{k}: {v}" for k, v in r.headers.items())
                return r

            for key in (API_KEY, HA_KEY, LIMITED_KEY, FILE_KEY):
                for method, path in (
                    ("GET", "/admin/status"),
                    ("GET", "/admin/usage"),
                    ("POST", "/admin/models/smol/unload"),
                ):
                    r = await call(method, path, bearer(key))
                    assert r.status_code == 403, (path, r.text)
                    assert r.json()["error"]["code"] == "admin_key_required"
            assert (await call("GET", "/admin/status", {})).status_code == 401
            assert (await call("GET", "/admin/status", bearer(WRONG))).status_code == 401
            assert d.workers(), "the refused unload must not have unloaded anything"

            # traffic of every kind, with right and wrong keys
            chat = {"model": "zoe-chat", "messages": HI, "max_tokens": 3}
            assert (await call("POST", "/v1/chat/completions", bearer(HA_KEY), json=chat)).status_code == 200
            cloudy = {**chat, "model": "cloud-first"}
            assert (await call("POST", "/v1/chat/completions", bearer(HA_KEY), json=cloudy)).status_code == 200
            assert (await call("POST", "/v1/chat/completions", bearer(WRONG), json=chat)).status_code == 401
            assert (await call("POST", "/api/chat", bearer(WRONG), json=chat)).status_code == 401
            forbidden = {**chat, "model": "cloud-only"}
            assert (await call("POST", "/v1/chat/completions", bearer(LIMITED_KEY), json=forbidden)).status_code == 403
            basic = {"Authorization": "Basic " + base64.b64encode(f"me:{WRONG}".encode()).decode()}
            assert (await call("GET", "/dashboard", basic)).status_code == 401
            assert (await call("GET", "/v1/models", bearer(FILE_KEY))).status_code == 200

            status = await call("GET", "/admin/status", bearer(ADMIN_KEY))
            assert status.status_code == 200
            assert set(status.json()["keys"]) == {"default", "admin", "ha", "limited", "filed", "metered"}
            usage = await call("GET", "/admin/usage", bearer(ADMIN_KEY), params={"limit": 100})
            assert {r["key_id"] for r in usage.json()["rows"]} >= {"ha", "limited", None}
            metrics = await call("GET", "/metrics", bearer(API_KEY))
            assert metrics.status_code == 200
    finally:
        d.stop()
    log = d.log()
    assert "401" in log and "403" in log  # the refusals were logged, without the keys
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in (*ALL_SECRETS, WRONG)]
    for secret in (*ALL_SECRETS, WRONG, *digests):
        assert secret not in log, f"a key is in the log: {secret[:6]}..."
        for body in seen:
            assert secret not in body, f"a key is in a response: {secret[:6]}..."
