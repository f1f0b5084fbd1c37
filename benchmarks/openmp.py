"""OpenMP threads that spin while they wait (libgomp as it comes) against ``OMP_WAIT_POLICY=PASSIVE``, which
dgan gives the processes of a local run whose threads outnumber the cores (:mod:`dgan.openmp_policy`).

libgomp reads its policy once, when torch loads it, so every measurement starts fresh processes: the local DGAN
run (broker, generator and nodes, the experiment's launch: pipeline 1, the default feedback) with the policy in
every process, and the single-process work the experiment does in its own process (generator cycles alone, the
central GAN's steps, segmenter steps) in a spawned process each, which is why dgan leaves that work as it comes.
The two policies alternate over the repeats so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.fresh_process import in_fresh_process

POLICIES = ("spin (libgomp's default)", "passive")
PHASES = ("generator cycles", "central GAN steps", "segmenter steps")
_TIMEOUT_S = 900  # one spawned process's phases


def _sizes(quick: bool) -> dict[str, int]:
    return ({"size": 64, "width": 16, "run_steps": 40, "cycles": 6, "gan_steps": 8, "seg_steps": 20} if quick else
            {"size": 128, "width": 32, "run_steps": 120, "cycles": 12, "gan_steps": 24, "seg_steps": 40})


@contextmanager
def policy_env(passive: bool) -> Iterator[None]:
    """This process's environment, which its children inherit, set to one policy; restored after."""
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DGAN_OMP_PASSIVE")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ.pop(k, None)
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ["DGAN_OMP_PASSIVE"] = "0"  # run_local then gives its children no policy: libgomp as it comes
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_rate(passive: bool, quick: bool, out: Path) -> dict[str, float]:
    """One local DGAN run as the experiment launches it (on the built-in scenes): applied samples/s after the
    first third, and the CPU seconds all its processes spent per applied sample."""
    from benchmarks.training import applied_rate
    from dgan.experiment import dgan_launch
    from dgan.experiment_config import ExperimentConfig
    from dgan.experiment_splits import make_splits
    from dgan.run import run_local

    sz = _sizes(quick)
    cfg = ExperimentConfig(out=out, size=sz["size"], g_width=sz["width"], d_width=sz["width"], scenes=160,
                           d_steps=1)  # as benchmarks.ONE_D_STEP
    launch = dgan_launch(cfg, make_splits(cfg), "async", 0, cfg.feedback[0])
    launch = replace(launch, steps=sz["run_steps"], out=out, sample_every=0, timeout=1800)
    with policy_env(passive):
        c0, t0 = os.times(), time.perf_counter()
        run_local(launch)
        c1, t1 = os.times(), time.perf_counter()
    cpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    samples = sz["run_steps"] * launch.batch_size
    return {"applied_per_s": applied_rate(out), "cpu_s_per_sample": cpu / samples, "wall_s": t1 - t0}


def measure_alone(passive: bool, sz: dict[str, int]) -> dict[str, Any]:
    """In a fresh process: set the policy, then load torch and time each phase once (after a warm-up). The
    central GAN's phase includes building its G and D (well under 1% of it at 128 px)."""
    import sys

    if "torch" in sys.modules:  # libgomp read its policy already: the measurement would be of the wrong one
        raise RuntimeError("torch was loaded before the OpenMP policy could be set")
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        os.environ.pop(k, None)
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    from benchmarks.gen_speed import _cycles
    from dgan.data.loaders import PairSet
    from dgan.data.scenes import make_scenes
    from dgan.experiment_central import central_gan
    from dgan.experiment_config import ExperimentConfig
    from dgan.networks import ModelConfig
    from dgan.segment import SegConfig, train_segmenter
    from dgan.training.generator import GeneratorTrainer, TrainConfig

    torch.set_num_threads(2)
    images, masks = make_scenes(range(64), sz["size"])
    gen = GeneratorTrainer(ModelConfig(image_size=sz["size"], g_width=sz["width"]), TrainConfig(seed=0))
    pairs = PairSet(images, masks, [str(i) for i in range(len(masks))])
    cfg = ExperimentConfig(out=Path("."), size=sz["size"], g_width=sz["width"], d_width=sz["width"],
                           gan_steps=sz["gan_steps"], snapshots=0)
    seg = SegConfig(steps=sz["seg_steps"], seed=1, eval_every=10 ** 9)
    _cycles(gen, masks[:8], 0, 2)  # warm-up: oneDNN primitives, the allocator's first blocks
    train_segmenter(images, masks, SegConfig(steps=2, seed=1))
    jobs: dict[str, Callable[[], int]] = {
        "generator cycles": lambda: (_cycles(gen, masks[:8], 100, sz["cycles"]), sz["cycles"] * 8)[1],
        "central GAN steps": lambda: (central_gan(cfg, pairs, 0, "adversarial"), sz["gan_steps"])[1],
        "segmenter steps": lambda: (train_segmenter(images, masks, seg), sz["seg_steps"])[1],
    }
    rates = {}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        items = job()
        rates[name] = items / (time.perf_counter() - t0)
    return {"rates": rates, "policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def run_openmp_benchmark(quick: bool = False, json_out: Path | None = None,
                         repeats: int | None = None) -> dict[str, Any]:
    console = Console()
    repeats = repeats or (2 if quick else 3)
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    alone: dict[str, dict[str, list[float]]] = {p: {ph: [] for ph in PHASES} for p in POLICIES}
    seen: dict[str, list[str]] = {p: [] for p in POLICIES}  # OMP_WAIT_POLICY as each spawned process had it
    sz = _sizes(quick)
    with tempfile.TemporaryDirectory() as tmp, console.status("local DGAN runs and single processes, alternating…"):
        for r in range(repeats):
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            for policy in order:
                passive = policy == POLICIES[1]
                runs[policy].append(run_rate(passive, quick, Path(tmp) / f"{r}-{int(passive)}"))
                measured = in_fresh_process(measure_alone, passive, sz, timeout_s=_TIMEOUT_S)
                seen[policy].append(measured["policy"])
                for ph, rate in measured["rates"].items():
                    alone[policy][ph].append(rate)
    spin, passive_ = POLICIES
    run_rows = [{"policy": p, "applied_samples_per_s": statistics.median(x["applied_per_s"] for x in runs[p]),
                 "cpu_s_per_sample": statistics.median(x["cpu_s_per_sample"] for x in runs[p]), "runs": runs[p]}
                for p in POLICIES]
    for row in run_rows:
        row["vs_spin"] = row["applied_samples_per_s"] / run_rows[0]["applied_samples_per_s"]
    alone_rows = [{"phase": ph, **{p: statistics.median(alone[p][ph]) for p in POLICIES},
                   "passive_vs_spin": statistics.median(alone[passive_][ph]) / statistics.median(alone[spin][ph]),
                   "runs": {p: alone[p][ph] for p in POLICIES}} for ph in PHASES]
    table = Table(title=f"local DGAN run as the experiment launches it (4 nodes, {sz['size']} px, "
                        f"{sz['run_steps']} steps), medians of {repeats}")
    for col in ("OpenMP wait policy", "applied samples/s", "vs spin", "CPU s per sample (all processes)"):
        table.add_column(col, justify="right")
    for row in run_rows:
        table.add_row(row["policy"], f"{row['applied_samples_per_s']:.2f}", f"{row['vs_spin']:.2f}x",
                      f"{row['cpu_s_per_sample']:.3f}")
    console.print(table)
    table = Table(title=f"one process alone on 2 threads (items/s), medians of {repeats}")
    for col in ("phase", *POLICIES, "passive vs spin"):
        table.add_column(col, justify="right")
    for row in alone_rows:
        table.add_row(row["phase"], *(f"{row[p]:.2f}" for p in POLICIES), f"{row['passive_vs_spin']:.2f}x")
    console.print(table)
    from dgan.openmp_policy import children_env, usable_cpus

    here = children_env(os.environ, 1 + 2 + 4, usable_cpus())[1]  # a 4-node run's threads, the generator on 2
    console.print(f"dgan's choice for a 4-node local run on this machine: {here}")
    result = {"quick": quick, "repeats": repeats, "sizes": sz, "cpus": usable_cpus(), "dgan_here": here,
              "run": run_rows,
              "alone": alone_rows, "alone_policy_seen": seen}
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}")
    return result
