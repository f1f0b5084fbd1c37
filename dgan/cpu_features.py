"""What this CPU (or GPU) does natively, so a speed setting is chosen by detection rather than assumed; and the
device checks and settings every command shares.

bf16 autocast pays only where the CPU has bf16 instructions (AVX512-BF16, AMX). Elsewhere PyTorch emulates
bf16 convolutions: a pix2pix step measured 0.045x the fp32 speed on this project's 2-core VM
(``docs/results/bench-precision.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's bf16-related and AVX-512/AMX flags: x86's ``flags`` line only (ARM's ``Features`` is not read, so
    ``auto`` stays fp32 there); empty where ``/proc/cpuinfo`` cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or "bf16" in f)


def native_bf16(flags: list[str] | None = None) -> bool:
    """True where the CPU computes bf16 itself (AVX512-BF16 or AMX-BF16)."""
    return bool(NATIVE_BF16_FLAGS & set(cpu_flags() if flags is None else flags))


def cuda_native_bf16() -> bool:
    """True where the CUDA device computes bf16 itself (Ampere and later); older GPUs emulate it."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.4 has no including_emulation
        return torch.cuda.get_device_capability() >= (8, 0)


def resolve_precision(precision: str, device: str = "cpu", flags: list[str] | None = None) -> str:
    """``auto`` -> ``bf16`` on a GPU or CPU that computes bf16 natively, else ``fp32``; others pass through."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if cuda_native_bf16() else "fp32"
    return "bf16" if native_bf16(flags) else "fp32"


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run here (one line), or None: a run asked for a GPU fails at once, not mid-run."""
    import re

    if device == "cpu":
        return None
    import torch

    m = re.fullmatch(r"cuda(?::([0-9]{1,2}))?", device)
    if m is None:
        return f"device must be cpu, cuda or cuda:N, got {device!r}"
    if not torch.cuda.is_available():
        return f"{device}: this torch ({torch.__version__}) sees no CUDA GPU here; use --device cpu"
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        return f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def precision_autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast where a model runs in (resolved) bf16; a no-op context otherwise. Forward passes only: PyTorch
    advises running backward outside it."""
    import torch

    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")


def slow_bf16_warning(precision: str, device: str = "cpu") -> str | None:
    """One line for a run asked for bf16 where the CPU only emulates it, or None: that run is ~20x slower."""
    if precision != "bf16" or device != "cpu" or native_bf16():
        return None
    return ("bf16 on a CPU without native bf16 (avx512_bf16/amx_bf16): emulated, it measured 0.045x fp32's speed; "
            "--precision auto picks bf16 only where it pays")


def deterministic_cuda() -> None:
    """cuDNN and cuBLAS use reproducible kernels, so one seed trains one segmenter on a GPU. Without this, session
    13's GPU runs trained the same real_partial segmenter (same seed, split and steps) to test IoU 0.453-0.539."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op with no such kernel warns instead of failing


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose random state ``torch.random.fork_rng`` must save and restore: none on a CPU."""
    import torch

    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
