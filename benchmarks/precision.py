"""bf16 autocast against fp32 for the pix2pix step on this machine's CPU.

Whether bf16 pays depends on the CPU: with AVX512-BF16 or AMX it can be faster,
without them PyTorch emulates bf16 convolutions and it is far slower.  The two
are interleaved so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.training import central_rate
from dgan.cpu_features import cpu_flags
from dgan.networks import ModelConfig


def run_precision_benchmark(quick: bool, json_out: Path | None, batch: int = 8, threads: int = 2) -> dict[str, Any]:
    console = Console()
    # at 128 px an emulated bf16 step can take ~25 s, so the full run times one step (after 2 warm-ups) per repeat
    size, width, steps, repeats = (64, 16, 2, 3) if quick else (128, 32, 1, 3)
    cfg = ModelConfig(image_size=size, g_width=width, d_width=width)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with console.status("pix2pix steps, fp32 and bf16 autocast interleaved…"):
        for _ in range(repeats):
            rates["fp32"].append(central_rate(cfg, batch, steps, threads))
            rates["bf16"].append(central_rate(cfg, batch, steps, threads, autocast=torch.bfloat16))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"image_size": size, "g_width": width, "batch": batch, "threads": threads, "repeats": repeats,
              "samples_per_s": med, "runs": rates, "bf16_speedup": med["bf16"] / med["fp32"],
              "cpu_bf16_flags": cpu_flags(), "torch": torch.__version__, "quick": quick}
    table = Table(title=f"pix2pix step at {size} px, batch {batch}, {threads} threads (medians of {repeats})")
    table.add_column("precision")
    table.add_column("samples/s", justify="right")
    table.add_column("s/step", justify="right")
    for k, v in med.items():
        table.add_row(k, f"{v:.2f}", f"{batch / v:.2f}")
    table.add_row("bf16 / fp32 speed", f"{result['bf16_speedup']:.2f}x", "")
    console.print(table)
    console.print(f"CPU bf16-capable flags: {', '.join(result['cpu_bf16_flags']) or 'none'}")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
