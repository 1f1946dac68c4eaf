"""What board we run on and how much memory a model may use: detection (I/O) and named profiles.

On a Jetson the GPU has no memory of its own: CUDA buffers come out of the same DRAM as everything
else, so the only figure that matters is ``MemAvailable`` (page cache and reclaimable slabs count
as available; ``MemFree`` does not) minus a reserve for the OS and the rest of the house. On a
discrete GPU, offloaded layers are limited by the GPU's free memory instead.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

MiB = 1024 * 1024

DeviceKind = Literal["jetson", "discrete-gpu", "cpu"]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: DeviceKind
    total_bytes: int
    available_bytes: int  # MemAvailable (measured), or a typical idle figure for a simulated board
    gpu_free_bytes: int = 0  # discrete GPUs only
    simulated: bool = False

    @property
    def unified_memory(self) -> bool:
        return self.kind == "jetson"

    @property
    def has_gpu(self) -> bool:
        return self.kind != "cpu"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "unified_memory": self.unified_memory,
            "total_mb": self.total_bytes // MiB,
            "available_mb": self.available_bytes // MiB,
            "gpu_free_mb": self.gpu_free_bytes // MiB,
            "simulated": self.simulated,
        }


def _board(name: str, total_mb: int, idle_used_mb: int) -> DeviceProfile:
    return DeviceProfile(name, "jetson", total_mb * MiB, (total_mb - idle_used_mb) * MiB, simulated=True)


# Totals are what the boards report (tegrastats "RAM used/total"); idle use is a headless JetPack 6
# with its usual services, measured figures vary by a few hundred MB.
SIMULATED: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        _board("orin-nano-8gb", 7620, 1100),
        _board("orin-nx-16gb", 15388, 1400),
        _board("agx-orin-32gb", 30536, 1800),
        _board("agx-orin-64gb", 62841, 2000),
        _board("xavier-nx-8gb", 7765, 1100),
    )
}


def read_meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def jetson_model(root: Path = Path("/")) -> str | None:
    """The board name if this is a Jetson (L4T release file or device-tree model), else ``None``."""
    model_file = root / "proc/device-tree/model"
    if model_file.exists():
        text = model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
        if "jetson" in text.lower() or "orin" in text.lower():
            return text
    if (root / "etc/nv_tegra_release").exists():
        return "NVIDIA Jetson"
    return None


def discrete_gpu_free() -> int | None:
    """Free memory of the first NVIDIA GPU via nvidia-smi, or ``None`` without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return int(out.split()[0]) * MiB
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def detect(profile: str = "auto") -> DeviceProfile:
    """The live profile, or a simulated board by name (``orin-nano-8gb``, ...)."""
    if profile != "auto":
        if profile not in SIMULATED:
            raise ValueError(f"unknown device profile {profile!r}; known: auto, {', '.join(SIMULATED)}")
        return SIMULATED[profile]
    mem = read_meminfo()
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", mem.get("MemFree", 0))
    board = jetson_model()
    if board is not None:
        return DeviceProfile(board, "jetson", total, available)
    gpu_free = discrete_gpu_free()
    if gpu_free is not None:
        return DeviceProfile("discrete NVIDIA GPU", "discrete-gpu", total, available, gpu_free_bytes=gpu_free)
    return DeviceProfile("cpu", "cpu", total, available)


def refresh(profile: DeviceProfile) -> DeviceProfile:
    """Re-read the live memory figures; simulated profiles stay as they are."""
    if profile.simulated:
        return profile
    mem = read_meminfo()
    gpu_free = discrete_gpu_free() if profile.kind == "discrete-gpu" else 0
    return replace(
        profile,
        available_bytes=mem.get("MemAvailable", profile.available_bytes),
        gpu_free_bytes=gpu_free if gpu_free is not None else profile.gpu_free_bytes,
    )
