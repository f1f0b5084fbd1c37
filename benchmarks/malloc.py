"""glibc malloc as it comes against dgan's tuned thresholds (:mod:`dgan.malloc_tuning`), side by side.

The setting is process-wide and cannot be undone, so each measurement runs in a fresh spawned process, and the
two settings alternate over the repeats so machine noise hits both alike; medians are reported. Each process
measures what the experiment spends its time on: generator cycles (forward, a node's gradient backward, Adam),
the central GAN's steps (G and its D, as ``dgan experiment`` trains it), synthesis (batches of 32, as the
experiment synthesises its sets) and segmenter steps (with validation), all fp32 on 2 threads, with the
kernel's share of the CPU time and the page faults each phase took.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.fresh_process import in_fresh_process

SETTINGS = ("glibc defaults", "tuned")
PHASES = ("generator cycles", "central GAN steps", "synthesis", "segmenter steps")
_TIMEOUT_S = 900  # one process's phases; a child still running then is killed and the benchmark fails


def _sizes(quick: bool) -> dict[str, int]:
    return ({"size": 64, "width": 16, "cycles": 6, "gan_steps": 4, "synth": 128, "seg_steps": 20} if quick else
            {"size": 128, "width": 32, "cycles": 12, "gan_steps": 16, "synth": 256, "seg_steps": 40})


def _phase(fn: Callable[[], int]) -> dict[str, float]:
    """Run ``fn`` (it returns how many items it made); its rate, kernel share of CPU time and page faults."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    items = fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"per_s": items / (t1 - t0), "sys_share": system / max(1e-9, user + system),
            "page_faults": float(r1.ru_minflt - r0.ru_minflt)}


def measure(tuned: bool, quick: bool) -> dict[str, Any]:
    """In a fresh process: apply the setting first, then time each phase once (after a warm-up)."""
    from dgan import malloc_tuning

    state = malloc_tuning.tune_malloc(environ={}) if tuned else "glibc defaults"
    import numpy as np
    import torch

    from benchmarks.fuzz_broker import rss_mb
    from benchmarks.gen_speed import _cycles
    from dgan.data.loaders import PairSet
    from dgan.data.scenes import make_scenes
    from dgan.experiment_central import central_gan
    from dgan.experiment_config import ExperimentConfig
    from dgan.networks import ModelConfig
    from dgan.segment import SegConfig, train_segmenter
    from dgan.training.generator import GeneratorTrainer, TrainConfig

    torch.set_num_threads(2)
    sz = _sizes(quick)
    images, masks = make_scenes(range(64), sz["size"])
    gen = GeneratorTrainer(ModelConfig(image_size=sz["size"], g_width=sz["width"]), TrainConfig(seed=0))
    batch = masks[:8]

    def cycles(n: int, first: int) -> int:  # the generator's cycle as `dgan bench speed` times it
        _cycles(gen, batch, first, n)
        return n * len(batch)

    pairs = PairSet(images, masks, [str(i) for i in range(len(masks))])
    many = np.concatenate([masks] * (sz["synth"] // len(masks)))
    cycles(2, 0)  # warm-up: oneDNN primitives, the allocator's first blocks
    gen.synthesize(many[:32])
    train_segmenter(images, masks, SegConfig(steps=2, seed=1))
    seg = SegConfig(steps=sz["seg_steps"], eval_every=sz["seg_steps"] // 2)

    def seg_steps() -> int:
        train_segmenter(images, masks, seg, val=(images, masks))
        return seg.steps

    def central_steps(steps: int) -> int:  # `dgan experiment`'s central GAN: G and D, both stepping
        cfg = ExperimentConfig(out=Path("unused"), size=sz["size"], g_width=sz["width"], gan_steps=steps,
                               snapshots=0)
        central_gan(cfg, pairs, 0, "adversarial")
        return steps

    central_steps(2)
    rows = {PHASES[0]: _phase(lambda: cycles(sz["cycles"], 100)),
            PHASES[1]: _phase(lambda: central_steps(sz["gan_steps"])),
            PHASES[2]: _phase(lambda: len(gen.synthesize(many))),
            PHASES[3]: _phase(seg_steps)}
    return {"state": state, "phases": rows, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_mb": rss_mb(os.getpid())}  # what the process keeps after its phases


def _measured(tuned: bool, quick: bool) -> dict[str, Any]:
    """``measure`` in a fresh spawned process, killed if it runs past the timeout."""
    return in_fresh_process(measure, tuned, quick, timeout_s=_TIMEOUT_S)


def _thp_mode() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def run_malloc_benchmark(quick: bool = False, json_out: Path | None = None,
                         repeats: int | None = None) -> dict[str, Any]:
    console = Console()
    repeats = repeats or (2 if quick else 3)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    with console.status("fresh processes, the two malloc settings alternating…"):
        for r in range(repeats):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                runs[setting].append(_measured(setting == SETTINGS[1], quick))
    base = SETTINGS[0]
    rows = []
    for setting in SETTINGS:
        for phase in PHASES:
            rates = [run["phases"][phase]["per_s"] for run in runs[setting]]
            base_rate = statistics.median(run["phases"][phase]["per_s"] for run in runs[base])
            rows.append({"setting": setting, "phase": phase, "per_s": statistics.median(rates), "runs": rates,
                         "vs_glibc": statistics.median(rates) / base_rate,
                         "sys_share": statistics.median(run["phases"][phase]["sys_share"] for run in runs[setting]),
                         "page_faults": statistics.median(run["phases"][phase]["page_faults"]
                                                          for run in runs[setting])})
    sz = _sizes(quick)
    table = Table(title=f"{sz['size']} px, fp32, 2 threads, a fresh process per run, medians of {repeats}")
    for col in ("setting", "phase", "per s", "vs glibc", "kernel share of CPU", "page faults"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(row["setting"], row["phase"], f"{row['per_s']:.1f}", f"{row['vs_glibc']:.2f}x",
                      f"{row['sys_share']:.0%}", f"{row['page_faults']:,.0f}")
    console.print(table)
    result = {"sizes": sz, "repeats": repeats, "rows": rows, "quick": quick,
              "states": {s: sorted({run["state"] for run in runs[s]}) for s in SETTINGS},
              "max_rss_mb": {s: statistics.median(run["max_rss_mb"] for run in runs[s]) for s in SETTINGS},
              "rss_after_mb": {s: statistics.median(run["rss_after_mb"] for run in runs[s]) for s in SETTINGS},
              "glibc": platform.libc_ver()[1], "transparent_hugepages": _thp_mode()}
    console.print("memory per process (MB, medians): peak " +
                  ", ".join(f"{s} {v:.0f}" for s, v in result["max_rss_mb"].items()) + "; resident at the end " +
                  ", ".join(f"{s} {v:.0f}" for s, v in result["rss_after_mb"].items()))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}")
    return result
