"""The memory planner and the device profiles it plans for: hand-computed figures, no model loaded.

Every expected number below was worked out by hand from the formulas documented in
``zoe_edge/supervisor/planner.py`` (the arithmetic is in the comment beside it), never by calling
the code under test. 1 MiB = 1,048,576 bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from zoe_edge.gguf_info import GGUFInfo, read_gguf
from zoe_edge.registry import DeviceSettings, ModelEntry
from zoe_edge.supervisor import device
from zoe_edge.supervisor.device import SIMULATED, DeviceProfile, MiB
from zoe_edge.supervisor.planner import (
    Budget,
    ContextDecision,
    ModelShape,
    Plan,
    choose_context,
    compute_buffer_bytes,
    kv_cache_bytes,
    plan_entry,
    plan_model,
)

GiB = 1024 * MiB

# Real GGUF header facts (SmolLM2 is cross-checked against the shipped file below).
SMOLLM2 = ModelShape(
    size_bytes=98_362_432,
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    head_dim=64,
    embedding_length=576,
    n_vocab=49_152,
)
GEMMA3 = ModelShape(
    size_bytes=253_113_024,
    n_layers=18,
    n_heads=4,
    n_kv_heads=1,
    head_dim=256,
    embedding_length=640,
    n_vocab=262_144,
)
# Synthetic shapes of well-known models (file sizes of typical Q4 quantisations).
MISTRAL_7B = ModelShape(
    size_bytes=4_368_439_296,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    embedding_length=4096,
    n_vocab=32_000,
)
LLAMA32_3B = ModelShape(
    size_bytes=2_019_377_696,
    n_layers=28,
    n_heads=24,
    n_kv_heads=8,
    head_dim=128,
    embedding_length=3072,
    n_vocab=128_256,
)

OVERHEAD = 200 * MiB  # 209,715,200


def budget(profile: DeviceProfile | str, reserve_mb: int = 1536, reclaimable: int = 0) -> Budget:
    if isinstance(profile, str):
        profile = SIMULATED[profile]
    return Budget(profile, reserve_mb * MiB, OVERHEAD, reclaimable)


def plan(shape: ModelShape, b: Budget, n_ctx: int = 4096, gpu_layers: int | str = "auto", **kw: object) -> Plan:
    return plan_model("m", shape, n_ctx=n_ctx, n_batch=512, gpu_layers=gpu_layers, budget=b, **kw)  # type: ignore[arg-type]


# --- KV cache ----------------------------------------------------------------------------------


def test_smollm2_kv_f16_matches_llama_cpp() -> None:
    # 2 x 30 layers x 3 kv heads x 64 dim x 4096 ctx = 47,185,920 elements; x 2 bytes = 94,371,840
    # = 90 x 1,048,576 = 90.00 MiB, what llama.cpp logs as "CPU KV buffer size = 90.00 MiB"
    assert kv_cache_bytes(SMOLLM2, 4096, "f16") == 94_371_840
    assert kv_cache_bytes(SMOLLM2, 4096) == 90 * MiB  # f16 is the default


def test_gemma3_kv_f16_matches_llama_cpp() -> None:
    # 2 x 18 x 1 x 256 x 4096 = 37,748,736 elements; x 2 bytes = 75,497,472 = 72 MiB
    # (llama.cpp reports it as two buffers, 12 MiB + 60 MiB = 72 MiB)
    assert kv_cache_bytes(GEMMA3, 4096, "f16") == 75_497_472
    assert kv_cache_bytes(GEMMA3, 4096, "f16") == (12 + 60) * MiB


@pytest.mark.parametrize(
    ("shape", "cache_type", "expected"),
    [
        # SmolLM2: 47,185,920 elements / 32 = 1,474,560 blocks; x 34 = 50,135,040 (47.8125 MiB)
        (SMOLLM2, "q8_0", 50_135_040),
        # SmolLM2: 1,474,560 blocks x 18 = 26,542,080 (25.3125 MiB)
        (SMOLLM2, "q4_0", 26_542_080),
        # Gemma: 37,748,736 elements / 32 = 1,179,648 blocks; x 34 = 40,108,032
        (GEMMA3, "q8_0", 40_108_032),
        # Gemma: 1,179,648 x 18 = 21,233,664
        (GEMMA3, "q4_0", 21_233_664),
    ],
)
def test_quantised_kv_bytes_per_element(shape: ModelShape, cache_type: str, expected: int) -> None:
    assert kv_cache_bytes(shape, 4096, cache_type) == expected  # type: ignore[arg-type]


def test_kv_scales_linearly_with_context() -> None:
    # 2 x 30 x 3 x 64 x 8192 x 2 = 188,743,680 = 180 MiB; 2048 ctx: 47,185,920 = 45 MiB
    assert kv_cache_bytes(SMOLLM2, 8192) == 188_743_680
    assert kv_cache_bytes(SMOLLM2, 2048) == 47_185_920


def test_llama32_3b_kv() -> None:
    # 2 x 28 x 8 x 128 x 4096 = 234,881,024 elements; x 2 = 469,762,048 = 448 MiB
    assert kv_cache_bytes(LLAMA32_3B, 4096) == 469_762_048 == 448 * MiB


def test_mistral_7b_kv() -> None:
    # 2 x 32 x 8 x 128 x 8192 = 536,870,912 elements; x 2 = 1,073,741,824 = 1024 MiB
    assert kv_cache_bytes(MISTRAL_7B, 8192) == 1_073_741_824 == 1024 * MiB


# --- compute buffer ----------------------------------------------------------------------------

# llama.cpp's "compute buffer size" log lines at n_ctx 4096, n_batch 512
MEASURED_COMPUTE_MIB = {"smollm2": 99.38, "gemma3": 514.50}


def test_smollm2_compute_buffer_hand_computed_and_close_to_llama_cpp() -> None:
    # ubatch = min(512, 512, 4096) = 512
    # logits = 512 x 49,152 x 4 = 100,663,296 (96 MiB)
    # scores = 512 x 4096 x 9 heads x 4 = 75,497,472 (72 MiB)  -> logits is the larger
    # activations = 512 x 576 x 16 = 4,718,592 (4.5 MiB)
    # compute = 100,663,296 + 4,718,592 = 105,381,888 (100.5 MiB)
    got = compute_buffer_bytes(SMOLLM2, 4096, 512)
    assert got == 105_381_888
    # 100.5 / 99.38 = 1.0113: 1.1 % above what llama.cpp allocates
    assert got / MiB == pytest.approx(MEASURED_COMPUTE_MIB["smollm2"], rel=0.05)


def test_gemma3_compute_buffer_hand_computed_and_close_to_llama_cpp() -> None:
    # logits = 512 x 262,144 x 4 = 536,870,912 (512 MiB)
    # scores = 512 x 4096 x 4 heads x 4 = 33,554,432 (32 MiB)  -> logits is the larger
    # activations = 512 x 640 x 16 = 5,242,880 (5 MiB)
    # compute = 536,870,912 + 5,242,880 = 542,113,792 (517 MiB)
    got = compute_buffer_bytes(GEMMA3, 4096, 512)
    assert got == 542_113_792
    # 517 / 514.5 = 1.0049: 0.5 % above llama.cpp
    assert got / MiB == pytest.approx(MEASURED_COMPUTE_MIB["gemma3"], rel=0.05)


def test_compute_buffer_attention_scores_can_dominate() -> None:
    # Mistral 7B at 8192 ctx: logits = 512 x 32,000 x 4 = 65,536,000 (62.5 MiB)
    # scores = 512 x 8192 x 32 x 4 = 536,870,912 (512 MiB) -> scores is the larger
    # activations = 512 x 4096 x 16 = 33,554,432 (32 MiB); compute = 570,425,344 (544 MiB)
    assert compute_buffer_bytes(MISTRAL_7B, 8192, 512) == 570_425_344


def test_compute_buffer_micro_batch_bounds() -> None:
    # n_batch 2048 is cut to the 512 micro-batch: same as n_batch 512 (105,381,888, above)
    assert compute_buffer_bytes(SMOLLM2, 4096, 2048) == 105_381_888
    # n_batch 128: logits 128 x 49,152 x 4 = 25,165,824; scores 128 x 4096 x 9 x 4 = 18,874,368;
    # activations 128 x 576 x 16 = 1,179,648 -> 25,165,824 + 1,179,648 = 26,345,472
    assert compute_buffer_bytes(SMOLLM2, 4096, 128) == 26_345_472
    # n_ctx 256 < n_batch: ubatch 256; logits 256 x 49,152 x 4 = 50,331,648;
    # scores 256 x 256 x 9 x 4 = 2,359,296; activations 256 x 576 x 16 = 2,359,296 -> 52,690,944
    assert compute_buffer_bytes(SMOLLM2, 256, 512) == 52_690_944


# --- whole plans: the two real models --------------------------------------------------------


def test_smollm2_plan_totals() -> None:
    p = plan(SMOLLM2, budget("orin-nano-8gb"))
    assert (p.weights_bytes, p.kv_bytes, p.compute_bytes, p.overhead_bytes) == (
        98_362_432,
        94_371_840,
        105_381_888,
        209_715_200,
    )
    # 98,362,432 + 94,371,840 + 105,381,888 + 209,715,200 = 507,831,360 (484.3 MiB)
    assert p.total_bytes == 507_831_360
    # (7620 - 1100 idle - 1536 reserve) MiB = 4984 MiB
    assert p.available_bytes == 4984 * MiB
    assert p.fits and p.gpu_layers == 31  # 30 layers + the output layer


def test_gemma3_plan_reason_has_exact_breakdown() -> None:
    p = plan(GEMMA3, budget("orin-nano-8gb"))
    # 253,113,024 + 75,497,472 + 542,113,792 + 209,715,200 = 1,080,439,488
    assert p.total_bytes == 1_080_439_488
    # weights 253,113,024 / 1,048,576 = 241.39 -> "241 MB"; 1,080,439,488 / 1,048,576 = 1030.39 -> "1,030 MB"
    assert "weights 241 MB + KV 72 MB (4096 ctx, f16) + compute 517 MB + overhead 200 MB = 1,030 MB" in p.reason
    assert p.reason.startswith("fits with 19/19 layers on the GPU; 4,984 MB available on orin-nano-8gb")


def test_shape_from_gguf_info_maps_every_field() -> None:
    info = GGUFInfo(
        path="/x.gguf",
        size_bytes=253_113_024,
        architecture="gemma3",
        name="g",
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        embedding_length=640,
        head_dim=256,
        context_length=32_768,
        n_vocab=262_144,
        file_type="Q4_K_M",
        n_params=268_098_176,
        has_chat_template=False,
    )
    assert ModelShape.from_gguf(info) == GEMMA3


def test_smollm2_shape_matches_the_shipped_file(smollm_gguf: Path) -> None:
    # the hand-entered facts above are the real file's header (read only, no model loaded)
    assert ModelShape.from_gguf(read_gguf(smollm_gguf)) == SMOLLM2


# --- 7B and 3B on the Orin boards --------------------------------------------------------------

# Mistral 7B, n_ctx 8192: 4,368,439,296 + 1,073,741,824 + 570,425,344 + 209,715,200 = 6,222,321,664
# = 5934.07 MiB (5934 x 1,048,576 = 6,222,249,984, + 71,680)
MISTRAL_TOTAL = 6_222_321_664


def test_7b_does_not_fit_orin_nano_with_2gb_reserve() -> None:
    p = plan(MISTRAL_7B, budget("orin-nano-8gb", reserve_mb=2048), n_ctx=8192)
    assert not p.fits
    assert p.gpu_layers == 0
    assert p.total_bytes == MISTRAL_TOTAL
    # (7620 - 1100 - 2048) MiB = 4472 MiB = 4,689,231,872; short 6,222,321,664 - 4,689,231,872
    # = 1,533,089,792 = 1462.07 MiB
    assert p.available_bytes == 4472 * MiB
    assert p.reason.startswith(
        "does not fit: needs 5,934 MB, 4,472 MB available on orin-nano-8gb after the 2,048 MB reserve (1,462 MB short)"
    )


def test_7b_fits_agx_orin_64_with_all_layers_on_gpu() -> None:
    p = plan(MISTRAL_7B, budget("agx-orin-64gb", reserve_mb=2048), n_ctx=8192)
    assert p.fits
    assert p.gpu_layers == 33  # 32 + output: unified memory, all or nothing
    # (62841 - 2000 - 2048) MiB = 58,793 MiB
    assert p.available_bytes == 58_793 * MiB
    assert p.reason.startswith("fits with 33/33 layers on the GPU; 58,793 MB available on agx-orin-64gb")


# Llama 3.2 3B, n_ctx 4096: KV 469,762,048 (448 MiB);
# compute: logits 512 x 128,256 x 4 = 262,668,288 (250.5 MiB) > scores 512 x 4096 x 24 x 4 = 201,326,592,
# + activations 512 x 3072 x 16 = 25,165,824 -> 287,834,112 (274.5 MiB)
# total 2,019,377,696 + 469,762,048 + 287,834,112 + 209,715,200 = 2,986,689,056 (2848.3 MiB)
LLAMA32_3B_TOTAL = 2_986_689_056


def test_3b_fits_orin_nano_with_default_reserve() -> None:
    b = Budget.from_settings(SIMULATED["orin-nano-8gb"], DeviceSettings(profile="orin-nano-8gb"))
    assert (b.reserve_bytes, b.overhead_bytes, b.reclaimable_bytes) == (1536 * MiB, 200 * MiB, 0)
    p = plan(LLAMA32_3B, b)
    assert (p.kv_bytes, p.compute_bytes, p.total_bytes) == (469_762_048, 287_834_112, LLAMA32_3B_TOTAL)
    assert p.fits and p.gpu_layers == 29
    # 7620 - 1100 - 1536 = 4984 MiB available
    assert p.available_bytes == 4984 * MiB
    assert "= 2,848 MB" in p.reason


def test_3b_fits_orin_nx_16() -> None:
    p = plan(LLAMA32_3B, budget("orin-nx-16gb"))
    assert p.fits and p.gpu_layers == 29
    # 15388 - 1400 - 1536 = 12,452 MiB
    assert p.available_bytes == 12_452 * MiB


def test_fit_boundary_is_inclusive_and_exact() -> None:
    # a board whose budget is exactly the 3B total fits; one byte less does not
    exact = DeviceProfile("exact", "jetson", 8 * GiB, LLAMA32_3B_TOTAL)
    assert plan(LLAMA32_3B, Budget(exact, 0, OVERHEAD)).fits
    short = DeviceProfile("short", "jetson", 8 * GiB, LLAMA32_3B_TOTAL - 1)
    p = plan(LLAMA32_3B, Budget(short, 0, OVERHEAD))
    assert not p.fits and "does not fit" in p.reason


def test_reserve_larger_than_available_leaves_zero() -> None:
    p = plan(SMOLLM2, budget("orin-nano-8gb", reserve_mb=10_000))
    assert p.available_bytes == 0
    assert not p.fits


# --- GPU layers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "expected"), [(10, 10), (0, 0), (31, 31), (500, 31), ("auto", 31)])
def test_numeric_gpu_layer_cap_on_jetson(cap: int | str, expected: int) -> None:
    p = plan(SMOLLM2, budget("orin-nano-8gb"), gpu_layers=cap)
    assert p.fits
    assert p.gpu_layers == expected
    assert p.reason.startswith(f"fits with {expected}/31 layers on the GPU")


def test_cpu_profile_never_offloads() -> None:
    cpu = DeviceProfile("cpu", "cpu", 16 * GiB, 8 * GiB)
    for cap in ("auto", 12):
        p = plan(SMOLLM2, Budget(cpu, 0, OVERHEAD), gpu_layers=cap)
        assert p.fits
        assert p.gpu_layers == 0
        assert "CPU" in p.reason and p.reason.startswith("fits on the CPU (no GPU)")


def test_cpu_profile_that_is_too_small() -> None:
    # SmolLM2 needs 507,831,360 bytes; 400 MiB = 419,430,400 is short by 88,400,960 (84.3 MiB)
    cpu = DeviceProfile("tiny", "cpu", 1 * GiB, 400 * MiB)
    p = plan(SMOLLM2, Budget(cpu, 0, OVERHEAD))
    assert not p.fits and p.gpu_layers == 0
    assert "needs 484 MB" in p.reason and "(84 MB short)" in p.reason


# Mistral 7B, n_ctx 8192 on a discrete GPU:
# layered (weights + KV) = 4,368,439,296 + 1,073,741,824 = 5,442,181,120; per layer / 33 = 164,914,579.39
# fixed on the GPU (compute + overhead) = 570,425,344 + 209,715,200 = 780,140,544
# 4 GiB free: room = 4,294,967,296 - 780,140,544 = 3,514,826,752; / 164,914,579.39 = 21.31 -> 21 layers
# (21 x 164,914,579.39 = 3,463,206,167 <= room < 22 x ... = 3,628,120,747)
# in RAM: 5,442,181,120 x 12/33 = 1,979,065,861.8 + 209,715,200 overhead = 2,188,781,061 (2087.4 MiB)


def discrete(gpu_free: int, available: int) -> DeviceProfile:
    return DeviceProfile("rtx", "discrete-gpu", 32 * GiB, available, gpu_free_bytes=gpu_free)


def test_discrete_gpu_partial_offload() -> None:
    p = plan(MISTRAL_7B, Budget(discrete(4 * GiB, 3 * GiB), 0, OVERHEAD), n_ctx=8192)
    assert p.fits
    assert p.gpu_layers == 21
    assert 0 < p.gpu_layers < 33
    assert p.reason.startswith("fits with 21/33 layers in 4,096 MB of free GPU memory, 2,087 MB in RAM")


def test_discrete_gpu_rest_must_fit_in_ram() -> None:
    # same split, but only 2048 MiB of RAM for the 2087 MiB that stays on the host
    p = plan(MISTRAL_7B, Budget(discrete(4 * GiB, 2 * GiB), 0, OVERHEAD), n_ctx=8192)
    assert not p.fits and p.gpu_layers == 0
    assert p.reason.startswith("does not fit: 2,087 MB must stay in RAM, 2,048 MB available")


def test_discrete_gpu_with_room_offloads_everything() -> None:
    # 24 GiB free is far more than 5,442,181,120 + 780,140,544; only the 200 MiB overhead stays in RAM
    p = plan(MISTRAL_7B, Budget(discrete(24 * GiB, 1 * GiB), 0, OVERHEAD), n_ctx=8192)
    assert p.fits and p.gpu_layers == 33
    assert "33/33 layers" in p.reason and "200 MB in RAM" in p.reason


def test_discrete_gpu_respects_numeric_cap() -> None:
    # cap 10: RAM keeps 5,442,181,120 x 23/33 = 3,793,096,235 + 209,715,200 = 4,002,811,435 (3817.4 MiB)
    p = plan(MISTRAL_7B, Budget(discrete(24 * GiB, 8 * GiB), 0, OVERHEAD), n_ctx=8192, gpu_layers=10)
    assert p.fits and p.gpu_layers == 10
    assert "10/33 layers" in p.reason and "3,817 MB in RAM" in p.reason


def test_discrete_gpu_without_room_counts_compute_in_ram() -> None:
    # A full GPU (0 free) offloads nothing, so the whole model runs from RAM exactly as on a CPU
    # board: weights + KV + compute + overhead = 507,831,360 must fit. With 450 MiB = 471,859,200
    # of RAM the CPU plan says no; the discrete plan only counts 98,362,432 + 94,371,840 + 209,715,200
    # = 402,449,472 and says yes, leaving the 105,381,888-byte compute buffer unaccounted for.
    cpu = plan(SMOLLM2, Budget(DeviceProfile("cpu", "cpu", 1 * GiB, 450 * MiB), 0, OVERHEAD))
    assert not cpu.fits
    gpu = plan(SMOLLM2, Budget(discrete(0, 450 * MiB), 0, OVERHEAD))
    assert gpu.gpu_layers == 0
    assert not gpu.fits


# --- reclaimable memory -------------------------------------------------------------------------


def test_reclaimable_memory_of_the_replaced_model_counts() -> None:
    # the 7B is 1462.07 MiB short on the Nano with a 2 GiB reserve (above)
    assert not plan(MISTRAL_7B, budget("orin-nano-8gb", 2048, reclaimable=1400 * MiB), n_ctx=8192).fits
    # 4472 + 1500 = 5972 MiB >= 5934.07 MiB
    p = plan(MISTRAL_7B, budget("orin-nano-8gb", 2048, reclaimable=1500 * MiB), n_ctx=8192)
    assert p.fits and p.gpu_layers == 33
    assert p.available_bytes == 5972 * MiB


def test_budget_from_settings_passes_reclaimable() -> None:
    s = DeviceSettings(reserve_mb=2048, overhead_mb=300)
    b = Budget.from_settings(SIMULATED["agx-orin-32gb"], s, reclaimable=123)
    assert (b.reserve_bytes, b.overhead_bytes, b.reclaimable_bytes) == (2048 * MiB, 300 * MiB, 123)
    assert b.profile is SIMULATED["agx-orin-32gb"]


# --- Plan.as_dict and reasons ------------------------------------------------------------------


def test_plan_as_dict_converts_bytes_to_mb() -> None:
    d = plan(SMOLLM2, budget("orin-nano-8gb")).as_dict()
    assert not [k for k in d if k.endswith("_bytes")]
    assert d["weights_mb"] == 93.8  # 98,362,432 / 1,048,576 = 93.806
    assert d["kv_mb"] == 90.0
    assert d["compute_mb"] == 100.5  # 105,381,888 / 1,048,576
    assert d["overhead_mb"] == 200.0
    assert d["total_mb"] == 484.3  # 507,831,360 / 1,048,576 = 484.306
    assert d["available_mb"] == 4984.0
    assert d["model"] == "m" and d["fits"] is True and d["gpu_layers"] == 31
    assert isinstance(d["reason"], str)


@pytest.mark.parametrize(
    "profile",
    [
        SIMULATED["orin-nano-8gb"],  # does not fit
        SIMULATED["agx-orin-64gb"],  # fits, jetson
        DeviceProfile("cpu", "cpu", 64 * GiB, 32 * GiB),  # fits, CPU
        discrete(4 * GiB, 3 * GiB),  # fits, partial offload
        discrete(4 * GiB, 1 * GiB),  # does not fit in RAM
    ],
    ids=lambda p: p.name + "-" + str(p.available_bytes // MiB),
)
def test_reason_always_has_breakdown(profile: DeviceProfile) -> None:
    p = plan(MISTRAL_7B, Budget(profile, 2048 * MiB if profile.kind == "jetson" else 0, OVERHEAD), n_ctx=8192)
    # 4,368,439,296 / 1,048,576 = 4166.07 -> 4,166 MB; KV 1,024 MB; compute 544 MB; total 5,934 MB
    assert "weights 4,166 MB + KV 1,024 MB (8192 ctx, f16) + compute 544 MB + overhead 200 MB = 5,934 MB" in p.reason


def test_cache_type_named_in_reason() -> None:
    p = plan(SMOLLM2, budget("orin-nano-8gb"), cache_type="q4_0")
    assert p.kv_bytes == 26_542_080
    assert "(4096 ctx, q4_0)" in p.reason


def test_plan_entry_uses_entry_settings() -> None:
    info = GGUFInfo(
        path="/smol.gguf",
        size_bytes=98_362_432,
        architecture="llama",
        name="smol",
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        embedding_length=576,
        head_dim=64,
        context_length=8192,
        n_vocab=49_152,
        file_type="Q4_1",
        n_params=134_515_008,
        has_chat_template=True,
    )
    entry = ModelEntry(file="smol.gguf", n_ctx=8192, n_batch=128, gpu_layers=7, kv_cache_type="q8_0")
    p = plan_entry("smol", entry, info, budget("orin-nano-8gb"))
    assert p.model == "smol"
    # KV: 2 x 30 x 3 x 64 x 8192 = 94,371,840 elements / 32 x 34 = 100,270,080
    assert p.kv_bytes == 100_270_080
    # compute, ubatch 128: logits 128 x 49,152 x 4 = 25,165,824 < scores 128 x 8192 x 9 x 4 = 37,748,736;
    # + activations 128 x 576 x 16 = 1,179,648 -> 38,928,384
    assert p.compute_bytes == 38_928_384
    assert p.gpu_layers == 7
    assert "(8192 ctx, q8_0)" in p.reason


# --- device.py ---------------------------------------------------------------------------------


def test_read_meminfo_converts_kb_to_bytes(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text(
        "MemTotal:        7802860 kB\n"
        "MemFree:          312004 kB\n"
        "MemAvailable:    5123456 kB\n"
        "HugePages_Total:       0\n"
        "Hugepagesize:       2048 kB\n"
        "garbage line without a colon\n"
        "Weird:   notanumber kB\n"
    )
    mem = device.read_meminfo(f)
    assert mem["MemTotal"] == 7_802_860 * 1024  # 7,990,128,640
    assert mem["MemFree"] == 312_004 * 1024
    assert mem["MemAvailable"] == 5_123_456 * 1024
    assert mem["HugePages_Total"] == 0  # no unit: taken as is
    assert mem["Hugepagesize"] == 2048 * 1024
    assert "Weird" not in mem and len(mem) == 5


def _root(tmp_path: Path, model: bytes | None = None, release: bool = False) -> Path:
    if model is not None:
        (tmp_path / "proc/device-tree").mkdir(parents=True)
        (tmp_path / "proc/device-tree/model").write_bytes(model)
    if release:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    return tmp_path


def test_jetson_model_from_device_tree(tmp_path: Path) -> None:
    root = _root(tmp_path, b"NVIDIA Jetson Orin Nano Developer Kit\0")
    assert device.jetson_model(root) == "NVIDIA Jetson Orin Nano Developer Kit"


def test_jetson_model_from_release_file_only(tmp_path: Path) -> None:
    assert device.jetson_model(_root(tmp_path, release=True)) == "NVIDIA Jetson"


def test_jetson_model_none_on_empty_root(tmp_path: Path) -> None:
    assert device.jetson_model(tmp_path) is None


def test_jetson_model_ignores_other_device_trees(tmp_path: Path) -> None:
    assert device.jetson_model(_root(tmp_path, b"Raspberry Pi 4 Model B Rev 1.4\0")) is None


def test_detect_simulated_profile() -> None:
    p = device.detect("orin-nano-8gb")
    assert p is SIMULATED["orin-nano-8gb"]
    assert (p.kind, p.simulated, p.unified_memory, p.has_gpu) == ("jetson", True, True, True)
    assert p.total_bytes == 7620 * MiB  # what tegrastats reports on the 8 GB Nano
    assert p.available_bytes == (7620 - 1100) * MiB


def test_detect_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown device profile 'nope'") as caught:
        device.detect("nope")
    for name in ("auto", "orin-nano-8gb", "orin-nx-16gb", "agx-orin-32gb", "agx-orin-64gb", "xavier-nx-8gb"):
        assert name in str(caught.value)


def _fake_live(monkeypatch: pytest.MonkeyPatch, board: str | None, gpu_free: int | None, mem: dict[str, int]) -> None:
    monkeypatch.setattr(device, "read_meminfo", lambda path=None: dict(mem))
    monkeypatch.setattr(device, "jetson_model", lambda root=None: board)
    monkeypatch.setattr(device, "discrete_gpu_free", lambda: gpu_free)


def test_detect_auto_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = {"MemTotal": 8 * GiB, "MemAvailable": 5 * GiB, "MemFree": 1 * GiB}
    _fake_live(monkeypatch, "NVIDIA Jetson AGX Orin", 6 * GiB, mem)
    p = device.detect()
    assert (p.name, p.kind, p.total_bytes, p.available_bytes, p.simulated) == (
        "NVIDIA Jetson AGX Orin",
        "jetson",
        8 * GiB,
        5 * GiB,
        False,
    )
    _fake_live(monkeypatch, None, 6 * GiB, mem)
    p = device.detect("auto")
    assert (p.kind, p.gpu_free_bytes) == ("discrete-gpu", 6 * GiB)
    # no MemAvailable (very old kernels): MemFree is used
    _fake_live(monkeypatch, None, None, {"MemTotal": 8 * GiB, "MemFree": 1 * GiB})
    p = device.detect()
    assert (p.kind, p.available_bytes, p.has_gpu) == ("cpu", 1 * GiB, False)


def test_refresh_leaves_simulated_profiles_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_live(monkeypatch, None, 1, {"MemAvailable": 1})
    for p in SIMULATED.values():
        assert device.refresh(p) is p


def test_refresh_rereads_live_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    live = DeviceProfile("rtx", "discrete-gpu", 32 * GiB, 10 * GiB, gpu_free_bytes=4 * GiB)
    _fake_live(monkeypatch, None, 3 * GiB, {"MemAvailable": 9 * GiB})
    p = device.refresh(live)
    assert (p.name, p.total_bytes, p.available_bytes, p.gpu_free_bytes) == ("rtx", 32 * GiB, 9 * GiB, 3 * GiB)
    # nvidia-smi gone: the last GPU figure is kept; MemAvailable missing: the last RAM figure is kept
    _fake_live(monkeypatch, None, None, {})
    p = device.refresh(live)
    assert (p.available_bytes, p.gpu_free_bytes) == (10 * GiB, 4 * GiB)


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(
        "zoe_edge.supervisor.device.shutil.which", lambda name: str(exe) if name == "nvidia-smi" else None
    )


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as nvidia-smi")
def test_discrete_gpu_free_parses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, monkeypatch, "echo 7800; echo 24000")  # first GPU, in MiB
    assert device.discrete_gpu_free() == 7800 * MiB


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as nvidia-smi")
def test_discrete_gpu_free_none_when_nvidia_smi_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert device.discrete_gpu_free() is None
    monkeypatch.setattr("zoe_edge.supervisor.device.shutil.which", lambda name: None)
    assert device.discrete_gpu_free() is None


def test_profile_as_dict() -> None:
    d = SIMULATED["agx-orin-64gb"].as_dict()
    assert d == {
        "name": "agx-orin-64gb",
        "kind": "jetson",
        "unified_memory": True,
        "total_mb": 62_841,
        "available_mb": 62_841 - 2000,
        "gpu_free_mb": 0,
        "simulated": True,
    }


# --- the context a request is served at (choose_context) ---------------------------------------
#
# SmolLM2 by the formulas above, for n >= 512 tokens of context:
#   KV(n) = 2 x 30 x 3 x 64 x 2 bytes x n = 23,040 n
#   compute(n) = max(512 x 49,152 x 4 = 100,663,296, 512 x n x 9 x 4 = 18,432 n) + 512 x 576 x 16 (4,718,592)
#   (the attention scores take over above n = 5461)
#   total(n) = 98,362,432 + KV + compute + 209,715,200
#            = 312,796,224 + 41,472 n for n > 5461; total(8192) = 652,534,848; total(6144) = 567,600,192;
#              total(6400) = 578,217,024; total(2048) = 413,459,520 + 47,185,920 = 460,645,440


def cpu_with(available: int) -> Budget:
    return Budget(DeviceProfile("cpu", "cpu", 64 * GiB, available), 0, OVERHEAD)


def plans_on(b: Budget, calls: list[int] | None = None) -> Callable[[int], Plan]:
    def plan_at(n_ctx: int) -> Plan:
        if calls is not None:
            calls.append(n_ctx)
        return plan(SMOLLM2, b, n_ctx=n_ctx)

    return plan_at


def choose(
    requested: int | None,
    loaded: int | None = 2048,
    *,
    b: Budget | None = None,
    train: int = 8192,
    last_resize_at: float | None = None,
    now: float = 1000.0,
    min_interval: float = 60.0,
    cap: int | None = None,
    calls: list[int] | None = None,
) -> ContextDecision:
    return choose_context(
        requested,
        loaded,
        2048,
        train,
        plans_on(b or cpu_with(32 * GiB), calls),
        last_resize_at=last_resize_at,
        now=now,
        min_interval=min_interval,
        cap=cap,
    )


def test_smollm2_totals_behind_the_context_tests() -> None:
    b = cpu_with(32 * GiB)
    assert plan(SMOLLM2, b, n_ctx=8192).total_bytes == 652_534_848
    assert plan(SMOLLM2, b, n_ctx=6144).total_bytes == 567_600_192
    assert plan(SMOLLM2, b, n_ctx=6400).total_bytes == 578_217_024
    assert plan(SMOLLM2, b, n_ctx=2048).total_bytes == 460_645_440


def test_larger_num_ctx_reloads_at_it_when_memory_and_training_allow() -> None:
    d = choose(8192)
    assert (d.n_ctx, d.reload, d.requested) == (8192, True, 8192)
    assert d.reason == "num_ctx 8192: reloaded at 8192"


def test_no_num_ctx_or_zero_keeps_the_loaded_context_without_planning() -> None:
    calls: list[int] = []
    for requested in (None, 0):
        d = choose(requested, 4096, calls=calls)
        assert (d.n_ctx, d.reload) == (4096, False) and d.reason == "no num_ctx asked: loaded at 4096"
    assert calls == []


def test_a_smaller_num_ctx_never_shrinks_the_context() -> None:
    calls: list[int] = []
    d = choose(2048, 8192, calls=calls)
    assert (d.n_ctx, d.reload) == (8192, False)
    assert d.reason == "num_ctx 2048 <= loaded at 8192: served at 8192"
    assert calls == []  # no memory plan needed to say no


def test_num_ctx_beyond_the_trained_context_gets_the_trained_context() -> None:
    d = choose(32768)
    assert (d.n_ctx, d.reload) == (8192, True)
    assert d.reason == "num_ctx 32768 capped at the model's trained context 8192: reloaded at 8192"
    d = choose(32768, 8192)  # already there: nothing to do, and the reason says why not more
    assert (d.n_ctx, d.reload) == (8192, False)
    assert d.reason == "num_ctx 32768 capped at the model's trained context 8192: loaded at 8192"


def test_registry_cap_bounds_the_context_below_the_trained_one() -> None:
    d = choose(8192, cap=4096)
    assert (d.n_ctx, d.reload) == (4096, True) and "max_n_ctx 4096" in d.reason


def test_unknown_trained_context_is_bounded_by_memory_only() -> None:
    d = choose(16384, train=0)
    assert (d.n_ctx, d.reload) == (16384, True)


def test_num_ctx_is_rounded_up_to_a_multiple_of_256_within_the_trained_context() -> None:
    assert choose(5000).n_ctx == 5120
    assert choose(8100).n_ctx == 8192


def test_too_little_memory_gets_the_largest_multiple_of_256_that_fits() -> None:
    # 570,000,000 bytes: total(n) <= it for n <= (570,000,000 - 312,796,224) / 41,472 = 6201.8 -> 6144
    calls: list[int] = []
    d = choose(8192, b=cpu_with(570_000_000), calls=calls)
    assert (d.n_ctx, d.reload) == (6144, True)
    assert d.reason.startswith("num_ctx 8192: 8192 does not fit: needs 622 MB, 544 MB available on cpu")
    assert d.reason.endswith("; reloaded at 6144, the largest that fits")
    assert len(calls) <= 6  # the target, then a bisection over the 23 steps from 2304 to 7936


def test_memory_for_nothing_above_the_floor_keeps_the_floor() -> None:
    # total(2304) = 413,459,520 + 23,040 x 2304 = 466,543,680 > 466,000,000 >= total(2048)
    d = choose(8192, b=cpu_with(466_000_000))
    assert (d.n_ctx, d.reload) == (2048, False)
    assert "nothing above 2048 fits, served at 2048" in d.reason


def test_fresh_load_takes_the_requested_context_directly_and_never_goes_below_the_floor() -> None:
    d = choose(8192, None)
    assert (d.n_ctx, d.reload) == (8192, False) and d.reason == "num_ctx 8192: loaded at 8192"
    d = choose(1024, None)
    assert (d.n_ctx, d.reload) == (2048, False) and d.reason == "num_ctx 1024 <= registry n_ctx 2048: served at 2048"
    d = choose(8192, None, b=cpu_with(570_000_000))
    assert (d.n_ctx, d.reload) == (6144, False)


def test_resizes_are_rate_limited_per_model() -> None:
    held = choose(8192, 4096, last_resize_at=1000.0 - 20, min_interval=60)
    assert (held.n_ctx, held.reload) == (4096, False)
    assert held.reason == (
        "num_ctx 8192: resize to 8192 held back, last resize 20 s ago (at most one per 60 s); served at 4096"
    )
    assert choose(8192, 4096, last_resize_at=1000.0 - 60, min_interval=60).reload
    assert choose(8192, 4096, last_resize_at=None, min_interval=60).reload
    # a fresh load costs a load anyway: the limit is on reloading a loaded model
    assert choose(8192, None, last_resize_at=1000.0 - 1, min_interval=60).n_ctx == 8192


def test_clients_taking_turns_resize_at_most_once_per_interval() -> None:
    """Clients asking 4096, 8192, nothing and 2048 in turn, one request a second, 10 s between resizes."""
    loaded, last, resizes = 2048, None, []
    for i, requested in enumerate([4096, 8192, None, 2048] * 6):
        d = choose(requested, loaded, last_resize_at=last, now=float(i), min_interval=10)
        if d.reload:
            resizes.append((i, d.n_ctx))
            loaded, last = d.n_ctx, float(i)
        assert d.n_ctx == loaded
    # 4096 at once; 8192 held back at 1, 5 and 9 s, granted at 13 s; then nothing grows
    assert resizes == [(0, 4096), (13, 8192)]


def test_plan_entry_plans_at_a_given_context() -> None:
    entry = ModelEntry(file="x.gguf", n_ctx=2048)
    info = GGUFInfo(
        path="/x.gguf",
        size_bytes=98_362_432,
        architecture="llama",
        name="x",
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        embedding_length=576,
        head_dim=64,
        context_length=8192,
        n_vocab=49_152,
        file_type="Q4_1",
        n_params=134_515_008,
        has_chat_template=True,
    )
    b = cpu_with(32 * GiB)
    assert plan_entry("m", entry, info, b).n_ctx == 2048
    p = plan_entry("m", entry, info, b, 8192)
    assert p.n_ctx == 8192 and p.total_bytes == 652_534_848 and p.verdict.startswith("fits on the CPU")
