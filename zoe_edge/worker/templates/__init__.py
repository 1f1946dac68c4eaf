"""Chat templates shipped with zoe-edge, for models whose GGUF has none (or a wrong one)."""

from __future__ import annotations

from importlib import resources


def bundled_formats() -> list[str]:
    """Names usable as ``chat_format`` besides ``auto``."""
    root = resources.files(__name__)
    return sorted(p.name.removesuffix(".jinja") for p in root.iterdir() if p.name.endswith(".jinja"))


def bundled_template(name: str) -> str | None:
    """The Jinja source of a bundled template, or ``None`` if there is no such template."""
    res = resources.files(__name__).joinpath(f"{name}.jinja")
    return res.read_text(encoding="utf-8") if res.is_file() else None
