"""Generator samples/s under each speed setting, side by side in one run (issue 13's speed work).

One cycle is what the central generator does per request: ``generate`` (G's forward, graph kept), then
``apply_feedback`` (the backward of a node's gradient) and ``update`` (Adam). Every variant is its own
:class:`GeneratorTrainer`; repeats interleave the variants so machine noise hits them alike; medians are reported.
bf16 is measured only where the CPU has it natively (or with ``force_bf16``): emulated, it is ~20x slower.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks import ONE_D_STEP
from dgan import malloc_tuning
from dgan.cpu_features import cpu_flags, native_bf16
from dgan.data.scenes import make_scenes
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, TrainConfig


@dataclass(frozen=True)
class Variant:
    name: str
    threads: int = 2
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False


BASELINE = Variant("fp32, 2 threads (default)")


def _variants(with_compile: bool, bf16: bool) -> list[Variant]:
    out = [BASELINE, Variant("fp32, 1 thread", threads=1), Variant("channels_last", channels_last=True)]
    if bf16:  # NHWC is the layout oneDNN's AMX kernels want: with bf16 it measured 2.36x, bf16 alone 1.72x
        out += [Variant("bf16 autocast", precision="bf16"),
                Variant("bf16 + channels_last", precision="bf16", channels_last=True)]
    if with_compile:
        out.append(Variant("torch.compile", compile=True))
    return out


def _cycles(trainer: GeneratorTrainer, masks: np.ndarray, first: int, n: int) -> None:
    for i in range(first, first + n):
        fakes = trainer.generate("bench", i, masks, i)
        grad = np.random.default_rng(i).standard_normal(fakes.shape).astype(np.float32) * 1e-3
        trainer.apply_feedback("bench", i, grad)
        trainer.update()


SystemSetting = tuple[str, bool]  # (every process's precision, the generator's G in channels_last)


def system_label(setting: SystemSetting) -> str:
    return setting[0] + (" + channels_last" if setting[1] else "")


def system_rates(quick: bool, settings: list[SystemSetting], repeats: int) -> dict[str, list[float]]:
    """Applied samples/s of a local 4-node DGAN run (broker, generator and nodes as processes) per setting, the
    same precision in every process; runs interleaved."""
    import tempfile

    from benchmarks.training import _sizes, applied_rate
    from dgan.run import RunConfig, run_local

    sz = _sizes(quick)
    rates: dict[str, list[float]] = {system_label(s): [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for i, (precision, channels_last) in enumerate(settings):
                out = Path(tmp) / f"{i}-{r}"
                run_local(RunConfig(nodes=4, steps=sz["steps"], out=out, scenes=160, image_size=sz["image_size"],
                                    g_width=sz["g_width"], d_width=sz["d_width"], batch_size=8, synthesize=False,
                                    checkpoint_every=0, sample_every=0, timeout=1800, precision=precision,
                                    channels_last=channels_last, node_args=ONE_D_STEP))
                rates[system_label((precision, channels_last))].append(applied_rate(out))
    return rates


def run_gen_speed_benchmark(quick: bool = False, json_out: Path | None = None, with_compile: bool = False,
                            force_bf16: bool = False, repeats: int | None = None,
                            system: bool = False) -> dict[str, Any]:
    console = Console()
    size, width, batch, cycles = (64, 16, 8, 10) if quick else (128, 32, 8, 3)
    repeats = repeats or (3 if quick else 5)
    model = ModelConfig(image_size=size, g_width=width)
    _, masks = make_scenes(range(batch), size)
    bf16 = force_bf16 or native_bf16()
    variants = _variants(with_compile, bf16)
    trainers: dict[str, GeneratorTrainer] = {}
    warmup_s: dict[str, float] = {}
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    threads_before = torch.get_num_threads()
    try:
        with console.status("generator cycles, variants interleaved…"):
            for v in variants:
                torch.set_num_threads(v.threads)
                t0 = time.perf_counter()
                trainers[v.name] = GeneratorTrainer(model, TrainConfig(seed=0, precision=v.precision,
                                                                       channels_last=v.channels_last,
                                                                       compile=v.compile))
                _cycles(trainers[v.name], masks, 0, 2)  # warm-up: compiles, allocator, oneDNN primitives
                warmup_s[v.name] = time.perf_counter() - t0
            for r in range(repeats):
                for v in variants:
                    torch.set_num_threads(v.threads)
                    _cycles(trainers[v.name], masks, 10_000 + r, 1)  # untimed: the thread pool settles
                    t0 = time.perf_counter()
                    _cycles(trainers[v.name], masks, 100 + r * cycles, cycles)
                    rates[v.name].append(cycles * batch / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads_before)
    base = statistics.median(rates[BASELINE.name])
    rows = [{"variant": v.name, "threads": v.threads, "precision": v.precision, "channels_last": v.channels_last,
             "compile": v.compile, "samples_per_s": statistics.median(rates[v.name]), "runs": rates[v.name],
             "vs_default": statistics.median(rates[v.name]) / base, "warmup_s": warmup_s[v.name]}
            for v in variants]
    no_bf16 = "this CPU has no native bf16 (avx512_bf16/amx_bf16); emulated bf16 measured 0.045x fp32"
    skipped = [] if bf16 else [{"variant": v, "why": no_bf16} for v in ("bf16 autocast", "bf16 + channels_last")]
    if not with_compile:
        skipped.append({"variant": "torch.compile", "why": "not asked for (--compile): ~35 s to compile at 128 px"})
    system_rows: list[dict[str, Any]] = []
    if system:
        with console.status("local DGAN runs (4 nodes), the settings interleaved…"):
            # bf16 runs only where native: emulated, four node processes would take ~20x as long
            settings = [("fp32", False), *([("bf16", False), ("bf16", True)] if native_bf16() else [])]
            sys_rates = system_rates(quick, settings, 2)
        sys_base = statistics.median(sys_rates[system_label(settings[0])])
        system_rows = [{"precision": p, "channels_last": cl, "applied_samples_per_s": statistics.median(v),
                        "runs": v, "vs_fp32": statistics.median(v) / sys_base}
                       for (p, cl), v in zip(settings, sys_rates.values(), strict=True)]
    table = Table(title=f"generator cycle (forward, node gradient backward, Adam) at {size} px, batch {batch}, "
                        f"medians of {repeats}")
    for col in ("variant", "samples/s", "vs default", "warm-up s"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(row["variant"], f"{row['samples_per_s']:.1f}", f"{row['vs_default']:.2f}x",
                      f"{row['warmup_s']:.1f}")
    for s in skipped:
        table.add_row(s["variant"], "—", "skipped", s["why"])
    console.print(table)
    if system_rows:
        sys_table = Table(title="local DGAN run, 4 node processes: applied samples/s (medians of 2)")
        for col in ("precision (every process)", "applied samples/s", "vs fp32"):
            sys_table.add_column(col, justify="right")
        for row in system_rows:
            sys_table.add_row(system_label((row["precision"], row["channels_last"])),
                              f"{row['applied_samples_per_s']:.1f}", f"{row['vs_fp32']:.2f}x")
        console.print(sys_table)
    result = {"image_size": size, "g_width": width, "batch": batch, "repeats": repeats, "rows": rows,
              "skipped": skipped, "system": system_rows, "cpu_flags": cpu_flags(), "native_bf16": native_bf16(),
              "torch": torch.__version__, "quick": quick, "malloc": malloc_tuning.state}
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}")
    return result
