"""Ollama's model listings and facts: tags, ps, show, pull, version (Home Assistant's config flow reads them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from zoe_edge import __version__
from zoe_edge.api.common import SETTINGS, SUPERVISOR, context, read_json, registry_of
from zoe_edge.api.front import gateway
from zoe_edge.canonical import GenerationRequest
from zoe_edge.errors import InvalidRequest, ModelNotFound, ServiceUnavailable, ZoeError
from zoe_edge.gguf_info import GGUFError, GGUFInfo, read_gguf
from zoe_edge.registry import Registry, model_path
from zoe_edge.routing.names import Resolved, registry_name, resolve_name
from zoe_edge.store import NotEnoughSpace, NotPullable, PullError, pull_model

log = logging.getLogger("zoe_edge.api")

# what Ollama version we answer as: recent enough for every client feature we implement
OLLAMA_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # Ollama's own "never expires" is far in the future


def _listed_model(registry: Registry, name: str) -> str | None:
    """The local model a listed registry name stands for (the one resolver, no key: a listing names none)."""
    try:
        return resolve_name(registry, name).model
    except ModelNotFound:  # a route whose select rule has no candidate: listed, with no facts
        return None


@contextlib.contextmanager
def known_names(registry: Registry, name: str) -> Iterator[None]:
    """An unknown name as Ollama says it (``model '...' not found``); a known one that cannot resolve now
    keeps its own reason."""
    try:
        yield
    except ModelNotFound:
        if registry_name(registry, name) in registry.names():
            raise
        raise ModelNotFound(f"model '{name}' not found") from None


async def resolve_known(request: web.Request, name: str, req: GenerationRequest | None = None) -> Resolved:
    """The gateway's resolver (under the key's rules), with Ollama's wording for an unknown name."""
    with known_names(registry_of(request.app), name):
        return await gateway(request).resolve(context(request), name, req)
    raise AssertionError("unreachable")  # mypy: known_names re-raises


def _facts(request: web.Request, model: str | None) -> tuple[GGUFInfo | None, float]:
    if model is None:
        return None, 0.0
    settings = request.app[SETTINGS]
    entry = registry_of(request.app).models[model]
    try:
        path = model_path(entry, settings.registry_path.resolve().parent, settings.state_dir)
        return read_gguf(path), path.stat().st_mtime
    except (GGUFError, OSError, ValueError):
        return None, 0.0


def _details(info: GGUFInfo | None) -> dict[str, Any]:
    if info is None:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        }
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": info.parameter_size,
        "quantization_level": info.file_type,
    }


def _digest(info: GGUFInfo | None, mtime: float) -> str:
    # an identity digest (path, size, mtime), not a content hash: hashing gigabytes per listing is not worth it
    seed = f"{info.path}:{info.size_bytes}:{mtime}" if info else "missing"
    return hashlib.sha256(seed.encode()).hexdigest()


def _entry(request: web.Request, name: str) -> dict[str, Any]:
    info, mtime = _facts(request, _listed_model(registry_of(request.app), name))
    modified = datetime.fromtimestamp(mtime, timezone.utc) if mtime else datetime.now(timezone.utc)
    return {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": modified.isoformat(),
        "size": info.size_bytes if info else 0,
        "digest": _digest(info, mtime),
        "details": _details(info),
    }


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [_entry(request, n) for n in registry_of(request.app).names()]})


async def ps(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    model = supervisor.loaded
    if model is None:
        return web.json_response({"models": []})
    entry = _entry(request, model)
    plan = supervisor.plan
    size = plan.total_bytes if plan else entry["size"]
    on_gpu = plan is not None and plan.gpu_layers > 0
    idle = supervisor.idle_unload_at()
    now = datetime.now(timezone.utc)
    # a keep_alive of 1e12 s is "for ever" too: past FOREVER, datetime itself would overflow
    far = idle is None or idle >= (FOREVER - now).total_seconds()
    expires = FOREVER if far or idle is None else now + timedelta(seconds=max(0.0, idle))
    entry.update(
        {
            "size": size,
            "size_vram": size if on_gpu else 0,
            "expires_at": expires.isoformat(),
            # what it runs at now: above the registry's after a num_ctx reload
            "context_length": supervisor.loaded_n_ctx or registry_of(request.app).models[model].n_ctx,
        }
    )
    return web.json_response({"models": [entry]})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    raw = str(body.get("model") or body.get("name") or "") if isinstance(body, dict) else ""
    resolved = await resolve_known(request, raw)
    registry = registry_of(request.app)
    name, model = resolved.name, resolved.model
    info, mtime = _facts(request, model)
    entry = registry.models[model] if model else None
    model_info: dict[str, Any] = {}
    if info is not None:
        arch = info.architecture
        model_info = {
            "general.architecture": arch,
            "general.parameter_count": info.n_params,
            f"{arch}.context_length": info.context_length,
            f"{arch}.block_count": info.n_layers,
            f"{arch}.embedding_length": info.embedding_length,
            f"{arch}.attention.head_count": info.n_heads,
            f"{arch}.attention.head_count_kv": info.n_kv_heads,
        }
    parameters = f"num_ctx {entry.n_ctx}" if entry else ""
    return web.json_response(
        {
            "modelfile": f"# served by zoe-edge {__version__} from models.yaml\nFROM {name}\n",
            "parameters": parameters,
            "template": "",
            "details": _details(info),
            "model_info": model_info,
            "capabilities": ["completion", "tools"],
            "modified_at": datetime.fromtimestamp(mtime or time.time(), timezone.utc).isoformat(),
        }
    )


def _pull_error(exc: PullError) -> ZoeError:
    """A pull that failed before its first line: the client's request (400) or the download (502/507)."""
    if isinstance(exc, NotPullable):
        return InvalidRequest(str(exc))
    if isinstance(exc, NotEnoughSpace):
        err: ZoeError = ServiceUnavailable(str(exc))
        err.status = 507
        return err
    err = ZoeError(str(exc), code="download_failed")
    err.status = 502
    return err


async def pull(request: web.Request) -> web.StreamResponse:
    """Download the file of a registry model with a ``url`` (resumed, verified), streaming Ollama's status lines.

    A model whose file is present (or has no ``url``) answers success at once, as Ollama does for a model
    it has; a name whose targets are all cloud models has nothing to pull and succeeds too.
    """
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    name = str(body.get("model") or body.get("name") or "")
    registry = registry_of(request.app)
    try:
        # the key's rules first: a limited key learns no other names
        resolved = await gateway(request).resolve(context(request), name)
    except ModelNotFound:
        if registry_name(registry, name) in registry.names():
            raise
        listed = ", ".join(f"{n}:latest" for n in registry.names())
        raise ModelNotFound(
            f"pull model manifest: {name!r} is not in models.yaml. Choose one of the models it serves "
            f"({listed}), or add the model to models.yaml under models: (a name with url: and sha256: to "
            f"download it, or file: <path to a .gguf> on this machine), then reload zoe-edge and pull that name"
        ) from None
    lines = _pull_lines(request, resolved.model)
    async with contextlib.aclosing(lines):
        try:
            first = await anext(lines)
        except PullError as exc:
            raise _pull_error(exc) from None
        if body.get("stream") is False:
            last = first
            try:
                async for line in lines:
                    last = line
            except PullError as exc:
                raise _pull_error(exc) from None
            return web.json_response(last)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        await response.write(json.dumps(first).encode() + b"\n")
        try:
            async for line in lines:
                await response.write(json.dumps(line).encode() + b"\n")
        except PullError as exc:
            # after the first line the status is sent; Ollama's clients read an error line and raise it
            log.warning("pull of %s failed: %s", name, exc)
            await response.write(json.dumps({"error": str(exc)}).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def _pull_lines(request: web.Request, model: str | None) -> AsyncGenerator[dict[str, object], None]:
    if model is None:
        yield {"status": "success"}
        return
    settings = request.app[SETTINGS]
    supervisor = request.app[SUPERVISOR]
    budget = supervisor.budget(supervisor.model is not None and supervisor.model != model)
    events = pull_model(
        model, registry_of(request.app), settings.registry_path.resolve().parent, settings.state_dir, budget=budget
    )
    async with contextlib.aclosing(events):
        async for event in events:
            if event.result is not None:
                log.info("pulled %s: %s", model, event.result.fit)
            yield event.as_ollama()


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


