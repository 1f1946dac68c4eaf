"""Does a model fit this board, and with how many GPU layers? A pure function with its reasons.

The estimate follows llama.cpp's own allocations (checked against its log on SmolLM2 and Gemma 3):

* weights: the GGUF file size (tensors are mapped or copied whole);
* KV cache: 2 (K and V) x layers x KV heads x head dim x context x bytes per element;
* compute buffer: the graph is reserved for a full micro-batch, and its peak is the larger of the
  logits (micro-batch x vocabulary x 4 bytes) and the attention scores (micro-batch x context x
  heads x 4 bytes), plus activations (micro-batch x embedding x 16 bytes);
* a fixed overhead for the worker process and, on a GPU, the CUDA context.

Available memory is ``MemAvailable`` minus the configured reserve, plus what the model being
replaced gives back. Never more: a plan that needs swap is a plan that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from zoe_edge.gguf_info import GGUFInfo
from zoe_edge.registry import DeviceSettings, ModelEntry
from zoe_edge.supervisor.device import DeviceProfile, MiB

KVCacheType = Literal["f16", "q8_0", "q4_0"]
KV_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MAX_UBATCH = 512


@dataclass(frozen=True)
class ModelShape:
    """The GGUF facts the estimate needs (see :class:`zoe_edge.gguf_info.GGUFInfo`)."""

    size_bytes: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    embedding_length: int
    n_vocab: int

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        return cls(
            size_bytes=info.size_bytes,
            n_layers=info.n_layers,
            n_heads=info.n_heads,
            n_kv_heads=info.n_kv_heads,
            head_dim=info.head_dim,
            embedding_length=info.embedding_length,
            n_vocab=info.n_vocab,
        )


@dataclass(frozen=True)
class Budget:
    """How much memory a model may take, and the knobs that bound it."""

    profile: DeviceProfile
    reserve_bytes: int
    overhead_bytes: int
    reclaimable_bytes: int = 0  # what unloading the current model returns

    @classmethod
    def from_settings(cls, profile: DeviceProfile, settings: DeviceSettings, reclaimable: int = 0) -> Budget:
        return cls(profile, settings.reserve_mb * MiB, settings.overhead_mb * MiB, reclaimable)


@dataclass(frozen=True)
class Plan:
    model: str
    fits: bool
    gpu_layers: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    available_bytes: int
    reason: str
    # KV snapshots of long prompt prefixes kept in the worker (see zoe_edge.worker.prefix)
    prefix_cache_bytes: int = 0
    prefix_cache_reason: str = ""
    n_ctx: int = 0  # the context this plan is for
    verdict: str = ""  # the reason without the breakdown ("does not fit: needs ...")
    # host memory held for one suspended generation's KV cells (0: generations are never suspended)
    suspend_bytes: int = 0
    suspend_reason: str = ""

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        for key in list(out):
            if key.endswith("_bytes"):
                out[key.replace("_bytes", "_mb")] = round(out.pop(key) / MiB, 1)
        return out


def kv_cache_bytes(shape: ModelShape, n_ctx: int, cache_type: KVCacheType = "f16") -> int:
    return int(2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * n_ctx * KV_BYTES[cache_type])


def compute_buffer_bytes(shape: ModelShape, n_ctx: int, n_batch: int) -> int:
    ubatch = min(n_batch, MAX_UBATCH, n_ctx)
    logits = ubatch * shape.n_vocab * 4
    scores = ubatch * n_ctx * shape.n_heads * 4
    activations = ubatch * shape.embedding_length * 16
    return max(logits, scores) + activations


def _mb(n: int) -> str:
    return f"{n / MiB:,.0f} MB"


def plan_model(
    name: str,
    shape: ModelShape,
    *,
    n_ctx: int,
    n_batch: int,
    gpu_layers: int | Literal["auto"],
    budget: Budget,
    cache_type: KVCacheType = "f16",
    prefix_cache_cap: int | None = None,
) -> Plan:
    """Decide whether ``name`` fits ``budget`` and how many layers go to the GPU."""
    profile = budget.profile
    weights = shape.size_bytes
    kv = kv_cache_bytes(shape, n_ctx, cache_type)
    compute = compute_buffer_bytes(shape, n_ctx, n_batch)
    overhead = budget.overhead_bytes
    total = weights + kv + compute + overhead
    ram = max(0, profile.available_bytes + budget.reclaimable_bytes - budget.reserve_bytes)
    all_layers = shape.n_layers + 1  # the output layer counts as one more in llama.cpp
    cap = all_layers if gpu_layers == "auto" else min(gpu_layers, all_layers)
    breakdown = (
        f"weights {_mb(weights)} + KV {_mb(kv)} ({n_ctx} ctx, {cache_type}) + compute {_mb(compute)} "
        f"+ overhead {_mb(overhead)} = {_mb(total)}"
    )

    fits, layers, why = _decide(profile, budget, shape, weights + kv, compute + overhead, total, ram, cap)
    # snapshots are host memory: on a discrete GPU only the layers left on the CPU compete for it
    on_gpu = layers / all_layers if profile.kind == "discrete-gpu" else 0.0
    in_ram = int((weights + kv) * (1 - on_gpu)) + overhead + (0 if on_gpu else compute)
    suspend, suspend_why = plan_suspension(fits, ram - in_ram, kv)
    prefix, prefix_why = plan_prefix_cache(fits, ram - in_ram - suspend, kv, prefix_cache_cap)
    return Plan(
        name,
        fits,
        layers,
        weights,
        kv,
        compute,
        overhead,
        total,
        ram,
        f"{why}: {breakdown}",
        prefix,
        prefix_why,
        n_ctx,
        why,
        suspend,
        suspend_why,
    )


def plan_suspension(fits: bool, spare: int, kv_full: int) -> tuple[int, str]:
    """Host memory for the state of one suspended generation, and why.

    A suspended sequence holds at most a full context of KV cells, copied to host memory while an
    interactive request runs; it is reserved before the prefix cache takes its share, so a pause
    never has to evict snapshots or push the board into swap.
    """
    if not fits:
        return 0, "suspension off: the model does not fit"
    if spare < kv_full:
        return 0, f"suspension off: {_mb(max(0, spare))} spare is less than one context's KV {_mb(kv_full)}"
    return kv_full, f"suspension: one context's KV {_mb(kv_full)} of {_mb(spare)} spare"


PREFIX_SPARE_SHARE = 4  # snapshots may take a quarter of the RAM the model leaves spare
PREFIX_KV_MULTIPLE = 4  # and at most four full-context KV caches' worth


def plan_prefix_cache(fits: bool, spare: int, kv_full: int, cap: int | None) -> tuple[int, str]:
    """Bytes of prompt-prefix KV snapshots the worker may keep, and why that many.

    Snapshots live in the worker's RAM (llama.cpp copies the KV cells to host memory), so they
    are paid from what the plan leaves spare; a 2k-token Home Assistant prompt takes half of a
    4k-context KV cache, so four full caches hold several distinct long prompts.
    """
    if cap == 0:
        return 0, "prefix cache off (prefix_cache: 0 in models.yaml)"
    if not fits:
        return 0, "prefix cache off: the model does not fit"
    share = max(0, spare) // PREFIX_SPARE_SHARE
    derived = min(share, PREFIX_KV_MULTIPLE * kv_full)
    why = (
        f"min(1/{PREFIX_SPARE_SHARE} of {_mb(max(0, spare))} spare = {_mb(share)}, "
        f"{PREFIX_KV_MULTIPLE} x KV {_mb(kv_full)} = {_mb(PREFIX_KV_MULTIPLE * kv_full)})"
    )
    if cap is not None and cap < derived:
        return cap, f"prefix cache {_mb(cap)}: the models.yaml cap, below {why}"
    if derived == 0:
        return 0, f"prefix cache off: no spare memory ({why})"
    return derived, f"prefix cache {_mb(derived)} = {why}"


def _decide(
    profile: DeviceProfile,
    budget: Budget,
    shape: ModelShape,
    layered: int,
    fixed: int,
    total: int,
    ram: int,
    cap: int,
) -> tuple[bool, int, str]:
    all_layers = shape.n_layers + 1
    if profile.kind == "discrete-gpu":
        # weights and KV split by layer; what is not offloaded stays in RAM
        per_layer = layered / all_layers
        room = profile.gpu_free_bytes - fixed
        layers = max(0, min(cap, int(room // per_layer))) if per_layer > 0 else 0
        host = int(layered * (1 - layers / all_layers)) + budget.overhead_bytes
        if room < 0:  # the compute buffer does not fit the GPU either, so it lives in RAM
            host += fixed - budget.overhead_bytes
        if host > ram:
            return False, 0, f"does not fit: {_mb(host)} must stay in RAM, {_mb(ram)} available"
        return (
            True,
            layers,
            (
                f"fits with {layers}/{all_layers} layers in {_mb(profile.gpu_free_bytes)} of free GPU memory, "
                f"{_mb(host)} in RAM"
            ),
        )
    where = f"{_mb(ram)} available on {profile.name} after the {_mb(budget.reserve_bytes)} reserve"
    if total > ram:
        return False, 0, f"does not fit: needs {_mb(total)}, {where} ({_mb(total - ram)} short)"
    if profile.kind == "jetson":
        # unified memory: a layer on the GPU costs the same DRAM as one on the CPU, so offload all of it
        return True, cap, f"fits with {cap}/{all_layers} layers on the GPU; {where}"
    return True, 0, f"fits on the CPU (no GPU); {where}"


def plan_entry(name: str, entry: ModelEntry, info: GGUFInfo, budget: Budget, n_ctx: int | None = None) -> Plan:
    """:func:`plan_model` for a registry entry and its GGUF header (at ``n_ctx``, default the entry's)."""
    ctx = entry.n_ctx if n_ctx is None else n_ctx
    return plan_model(
        name,
        ModelShape.from_gguf(info),
        n_ctx=ctx,
        n_batch=min(entry.n_batch, ctx),
        gpu_layers=entry.gpu_layers,
        budget=budget,
        cache_type=entry.kv_cache_type,
        prefix_cache_cap=entry.prefix_cache,
    )


# --- the context a request is served at -------------------------------------------------------

CONTEXT_STEP = 256  # llama.cpp pads the KV cache to this; contexts the planner picks are multiples of it
MAX_CONTEXT = 1_048_576  # the registry's own upper bound, used when the GGUF does not say


@dataclass(frozen=True)
class ContextDecision:
    """The context to serve a request at, and whether the loaded model must be reloaded for it.

    ``reload`` is only ever true for a model that is loaded now; for a fresh load ``n_ctx`` is
    simply the context to load at.
    """

    n_ctx: int
    reload: bool
    reason: str
    requested: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _round_up(n: int) -> int:
    return -(-n // CONTEXT_STEP) * CONTEXT_STEP


def choose_context(
    requested: int | None,
    loaded: int | None,
    floor: int,
    n_ctx_train: int,
    plan_at: Callable[[int], Plan],
    *,
    last_resize_at: float | None,
    now: float,
    min_interval: float,
    cap: int | None = None,
) -> ContextDecision:
    """The context for a request that asks for ``requested`` tokens (Ollama's ``num_ctx``).

    ``loaded`` is the context the model is loaded at (``None``: not loaded, this is a fresh
    load); ``floor`` the registry's ``n_ctx``, never gone below; ``n_ctx_train`` the GGUF's trained
    context (0: unknown), never gone above, nor above ``cap``; ``plan_at(n)`` the memory plan at
    ``n`` tokens. A context never shrinks for a smaller request (that would reload on every
    alternation), and a loaded model is resized at most once per ``min_interval`` seconds
    (``last_resize_at`` and ``now`` on the same clock). A larger request than memory allows gets the
    largest multiple of :data:`CONTEXT_STEP` that fits.
    """
    current = loaded if loaded is not None else floor
    where = f"loaded at {current}" if loaded is not None else f"registry n_ctx {floor}"
    if not requested:
        return ContextDecision(current, False, f"no num_ctx asked: {where}", requested)
    if requested <= current:
        return ContextDecision(current, False, f"num_ctx {requested} <= {where}: served at {current}", requested)
    limits = [(n_ctx_train, f"the model's trained context {n_ctx_train}")] if n_ctx_train > 0 else []
    if cap is not None:
        limits.append((cap, f"max_n_ctx {cap}"))
    limits.append((MAX_CONTEXT, f"the {MAX_CONTEXT} limit"))
    ceiling, ceiling_why = min(limits)
    target = _round_up(requested)
    asked = f"num_ctx {requested}"
    if target > ceiling:
        target, asked = ceiling, f"num_ctx {requested} capped at {ceiling_why}"
    if target <= current:
        return ContextDecision(current, False, f"{asked}: {where}", requested)
    if loaded is not None and last_resize_at is not None and now - last_resize_at < min_interval:
        return ContextDecision(
            current,
            False,
            f"{asked}: resize to {target} held back, last resize {now - last_resize_at:.0f} s ago "
            f"(at most one per {min_interval:.0f} s); served at {current}",
            requested,
        )
    verb = "reloaded at" if loaded is not None else "loaded at"
    plan = plan_at(target)
    if plan.fits:
        return ContextDecision(target, loaded is not None, f"{asked}: {verb} {target}", requested)
    # memory grows with the context, so the contexts that fit are a prefix: bisect the steps above current
    lo, hi = current // CONTEXT_STEP + 1, target // CONTEXT_STEP  # candidates lo*STEP .. hi*STEP (target fails)
    best: int | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        if plan_at(mid * CONTEXT_STEP).fits:
            best, lo = mid * CONTEXT_STEP, mid + 1
        else:
            hi = mid
    if best is None:
        why = f"{asked}: {target} {plan.verdict}; nothing above {current} fits, served at {current}"
        return ContextDecision(current, False, why, requested)
    return ContextDecision(
        best, loaded is not None, f"{asked}: {target} {plan.verdict}; {verb} {best}, the largest that fits", requested
    )
