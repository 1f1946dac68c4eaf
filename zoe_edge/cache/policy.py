"""Whether a request may be answered from the cache and whether its answer may be stored. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from zoe_edge.cache.config import CacheControls, RouteCacheMode
from zoe_edge.cache.key import TargetView

CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class Decision:
    lookup: bool  # may a stored answer be served
    store: bool  # may the fresh answer be stored
    reason: str

    @property
    def status(self) -> CacheStatus:
        """What ``x-zoe-cache`` says unless the lookup hits: a lookup that found nothing is a miss."""
        return "miss" if self.lookup else "bypass"


def nondeterministic(views: list[TargetView]) -> str | None:
    """Why some target may answer differently each time (sampling above 0 without a seed), or ``None``."""
    for view in views:
        s = view.sampling
        if s.seed is None and (s.temperature is None or s.temperature > 0):
            temperature = "the provider's default" if s.temperature is None else f"{s.temperature:g}"
            return f"not deterministic: {view.target.label} samples at temperature {temperature} without a seed"
    return None


def header_directives(cache_control: str | None) -> frozenset[str]:
    """The directives of a ``Cache-Control`` request header, lower-cased (``no-cache``, ``no-store`` ...)."""
    if not cache_control:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in cache_control.split(","))


def decide(
    route_mode: RouteCacheMode,
    views: list[TargetView],
    controls: CacheControls | None,
    cache_control: str | None,
    backend_problem: str | None = None,
) -> Decision:
    """Lookup and store permissions for one request, and the reason, most decisive first."""
    if route_mode is False:
        return Decision(False, False, "the route turns caching off")
    if route_mode == "deterministic":
        why = nondeterministic(views)
        if why is not None:
            return Decision(False, False, why)
    directives = header_directives(cache_control)
    no_cache = "no-cache" in directives or bool(controls and controls.no_cache)
    no_store = "no-store" in directives or bool(controls and controls.no_store)
    if backend_problem is not None:
        return Decision(False, False, f"cache unavailable: {backend_problem}")
    if no_cache and no_store:
        return Decision(False, False, "client asked for no-cache and no-store")
    if no_cache:
        return Decision(False, True, "client asked for no-cache: the fresh answer replaces the stored one")
    if no_store:
        return Decision(True, False, "client asked for no-store")
    reason = "deterministic" if route_mode == "deterministic" else "the route caches every answer"
    return Decision(True, True, reason)
