"""glibc malloc settings for tensor work: large freed blocks are kept for reuse instead of going back to the OS.

PyTorch's CPU tensors come from ``malloc``. glibc serves a block above its mmap threshold (dynamic, 128 KiB to
32 MiB) by ``mmap`` and unmaps it on ``free``, so each large activation of each step lands on fresh pages the
kernel must fault in and zero. At 128 px, synthesis with batches of 32 spent about half its CPU time in the
kernel that way (2.1 million page faults for 256 images). Raising the mmap and trim thresholds to 1 GiB keeps
those blocks in the heap: the same synthesis ran 1.9x as fast and a central GAN step about 1.1x (session 26,
``dgan bench malloc``). PyTorch's CPU tuning guide gets the same effect by preloading jemalloc or tcmalloc.

Every ``dgan`` command applies it at start-up. ``DGAN_MALLOC_TUNING=0`` leaves glibc as it is, and so do the
user's own ``MALLOC_*_`` or ``GLIBC_TUNABLES`` malloc settings, or an allocator in ``LD_PRELOAD``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("dgan.malloc")

ENV = "DGAN_MALLOC_TUNING"
THRESHOLD = 1 << 30  # bytes: blocks up to this size are reused from the heap, and up to this much free stays there
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_USER_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

state = "not applied"  # what this process's tune_malloc did (shown by `dgan bench malloc` and the tests)


def why_not(environ: Mapping[str, str]) -> str | None:
    """Why the settings should be left alone here, or None."""
    if environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return f"off ({ENV}={environ[ENV]})"
    if any(k in environ for k in _USER_MALLOC_ENV) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "left to the user's MALLOC_*_ / GLIBC_TUNABLES settings"
    if any(name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "left to the preloaded allocator"
    return None


def tune_malloc(environ: Mapping[str, str] | None = None, threshold: int = THRESHOLD) -> str:
    """Raise glibc's mmap and trim thresholds in this process; returns what was done (also kept in ``state``)."""
    global state
    reason = why_not(os.environ if environ is None else environ)
    if reason is not None:
        state = reason
        return state
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and macOS have no mallopt of these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        state = "not glibc: left as it is"
        return state
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    accepted = (mallopt(_M_MMAP_THRESHOLD, threshold), mallopt(_M_TRIM_THRESHOLD, threshold))
    state = "tuned" if accepted == (1, 1) else f"glibc refused {threshold} bytes (mmap, trim accepted: {accepted})"
    log.debug("malloc: %s", state)
    return state
