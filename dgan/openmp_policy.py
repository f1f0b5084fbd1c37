"""OpenMP threads that sleep while they wait, for the processes of a local run that share too few cores.

PyTorch's CPU wheel on Linux runs its parallel regions on libgomp. With ``OMP_WAIT_POLICY`` unset, a libgomp
thread that has finished its share of a region spins (``GOMP_SPINCOUNT``, 300,000 pauses) before it sleeps.
Alone on its cores that costs nothing but an idle core. In a local DGAN run the generator's two threads share
two cores with four nodes, so every spin is CPU a node needed: in session 28's profile of the experiment's DGAN,
libgomp's wait loop held 41% of the generator's CPU samples, and with ``OMP_WAIT_POLICY=PASSIVE`` the same run
applied 1.31x the samples per second on 23% less CPU per step (``docs/results/speed.md``, session 28). Alone,
the central GAN and the segmenters lost a few percent to it (a sleeping thread wakes later than a spinning
one), so the policy is set only for the children of a run whose threads outnumber the cores.

``run_local`` asks :func:`children_env` once per run; libgomp reads the variable once, when torch loads it, so it
is set in each child's environment at start. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept (and
inherited as it is); ``DGAN_OMP_PASSIVE=0`` leaves OpenMP as it comes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

ENV = "DGAN_OMP_PASSIVE"
_USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (``docker --cpus``, a Kubernetes limit), or None: cgroup v2
    ``cpu.max`` ("QUOTA PERIOD", "max" for none) or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 for none),
    read where a container sees its own cgroup."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its affinity mask (``taskset``, a cpuset), capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def children_env(environ: Mapping[str, str], threads: int, cpus: int) -> tuple[dict[str, str], str]:
    """What to add to the environment of a run's processes, which will run ``threads`` threads in all on
    ``cpus`` cores, and why (for the log)."""
    if environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return {}, f"OpenMP as it comes ({ENV}={environ[ENV]})"
    user = [f"{k}={environ[k]}" for k in _USER_SETTINGS if k in environ]
    if user:
        return {}, "OpenMP left to the user's " + ", ".join(user)
    if threads <= cpus:
        return {}, f"OpenMP as it comes ({threads} threads on {cpus} cores)"
    return {"OMP_WAIT_POLICY": "PASSIVE"}, f"OMP_WAIT_POLICY=PASSIVE ({threads} threads on {cpus} cores)"
