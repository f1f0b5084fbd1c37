"""glibc malloc settings for tensor work: large freed blocks are kept for reuse instead of going back to the OS.

PyTorch's CPU tensors come from ``malloc``. glibc serves a block above its mmap threshold (dynamic, 128 KiB to
32 MiB) by ``mmap`` and unmaps it on ``free``, and gives the top of its heap back above its trim threshold, so
large activations land on fresh pages the kernel must fault in and zero, pass after pass. At 128 px, synthesis
with batches of 32 spent about half its CPU time in the kernel that way (2.2 million page faults for 256 images).
Raising both thresholds to 1 GiB keeps those blocks in the heap: the same synthesis ran 1.78-1.97x as fast,
generator cycles 1.16x and the central GAN's steps 1.06x (session 26, ``dgan bench malloc``). PyTorch's CPU
tuning guide gets the same effect by preloading jemalloc or tcmalloc. The cost: a process keeps the memory it
has freed (its peak stays resident).

Every ``dgan`` command applies it at start-up. ``DGAN_MALLOC_TUNING=0`` leaves glibc as it is, and so do the
user's own ``MALLOC_*_`` or ``GLIBC_TUNABLES`` mmap/trim settings, or an allocator in ``LD_PRELOAD``. glibc
before 2.35 refuses an mmap threshold above 32 MiB; there 32 MiB is used. Anything but glibc is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("dgan.malloc")

ENV = "DGAN_MALLOC_TUNING"
THRESHOLD = 1 << 30  # bytes: blocks up to this size are reused from the heap, and up to this much free stays there
OLD_GLIBC_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # glibc < 2.35: HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_USER_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
                  "glibc.malloc.mmap_max")

state = "not applied"  # what this process's tune_malloc did (shown by `dgan bench malloc` and the tests)
applied_threshold = 0  # bytes, once tuned


def why_not(environ: Mapping[str, str]) -> str | None:
    """Why the settings should be left alone here, or None."""
    if environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return f"off ({ENV}={environ[ENV]})"
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(k in environ for k in _USER_MALLOC_ENV) or any(t in tunables for t in _USER_TUNABLES):
        return "left to the user's MALLOC_*_ / GLIBC_TUNABLES settings"
    if any(name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "left to the preloaded allocator"
    return None


def _glibc_mallopt() -> Any:
    """glibc's ``mallopt``, or None anywhere else (musl, macOS, Windows), without loading anything there."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def tune_malloc(environ: Mapping[str, str] | None = None, threshold: int = THRESHOLD) -> str:
    """Raise glibc's mmap and trim thresholds in this process; returns what was done (also kept in ``state``).
    Never raises: a process runs on with its allocator as it was rather than fail over a speed setting."""
    global state, applied_threshold
    if not 0 < threshold < 2**31:
        raise ValueError(f"threshold must be between 1 byte and 2 GiB (a C int), got {threshold}")
    reason = why_not(os.environ if environ is None else environ)
    if reason is not None:
        state = reason
        return state
    try:
        mallopt = _glibc_mallopt()
        if mallopt is None:
            state = "not glibc: left as it is"
            return state
        # The trim threshold is set only once an mmap threshold is taken: setting it alone turns off glibc's
        # dynamic mmap threshold, which would leave it at 128 KiB, worse than doing nothing.
        for value in dict.fromkeys((threshold, min(threshold, OLD_GLIBC_MAX))):
            if mallopt(_M_MMAP_THRESHOLD, value) == 1:
                mallopt(_M_TRIM_THRESHOLD, value)
                state, applied_threshold = "tuned", value
                log.debug("malloc: mmap and trim thresholds %d bytes", value)
                return state
    except Exception as exc:  # ctypes on an unexpected libc: keep the process running
        state = f"left as it is ({type(exc).__name__}: {exc})"
        log.warning("malloc tuning failed: %s", state)
        return state
    state = "glibc refused the thresholds: left as it is"
    log.warning("malloc: %s (asked %d bytes, then %d)", state, threshold, min(threshold, OLD_GLIBC_MAX))
    return state
