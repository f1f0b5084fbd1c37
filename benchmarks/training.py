"""Training benchmarks: DGAN against centralized pix2pix, and async against sync with a straggler.

Rates come from the generator's status history (samples whose feedback was
applied, per second, between the first and the last status after warm-up),
so process start-up and synthesis are not counted.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks import ONE_D_STEP
from dgan.data.scenes import make_scenes
from dgan.networks import GANLoss, ModelConfig, define_D, define_G, images_to_tensor, masks_to_input
from dgan.run import RunConfig, run_local

LAMBDA_L1 = 100.0  # the central baseline is pix2pix, so the DGAN runs here use feedback l1 (like for like)


def _sizes(quick: bool) -> dict[str, int]:
    return {"image_size": 64, "g_width": 16, "d_width": 16, "steps": 15} if quick else {
        "image_size": 128, "g_width": 32, "d_width": 32, "steps": 40}


def applied_rate(out: Path) -> float:
    """Samples applied per second over the run's status history, first third skipped as warm-up."""
    hist = json.loads((out / "history.json").read_text())
    hist = [h for h in hist if h["samples_applied"] > 0]
    if len(hist) < 3:
        summary = json.loads((out / "run.json").read_text())
        return float(summary["samples_per_s"])
    a, b = hist[len(hist) // 3], hist[-1]
    return (b["samples_applied"] - a["samples_applied"]) / max(1e-9, b["time"] - a["time"])


def central_rate(cfg: ModelConfig, batch: int, steps: int, threads: int, autocast: torch.dtype | None = None) -> float:
    """Samples/s of one pix2pix process doing G and D work on ``batch`` per step (optionally under CPU autocast)."""
    torch.set_num_threads(threads)
    images, masks = make_scenes(range(batch), cfg.image_size)
    G, D = define_G(cfg), define_D(cfg)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    gan = GANLoss(cfg.gan_mode)
    m = masks_to_input(torch.from_numpy(masks), cfg.num_classes)
    real = images_to_tensor(torch.from_numpy(images))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            fake = G(m)
            opt_d.zero_grad()
            ((gan(D(m, real), True) + gan(D(m, fake.detach()), False)) * 0.5).backward()
            opt_d.step()
            for p in D.parameters():
                p.requires_grad_(False)
            opt_g.zero_grad()
            (gan(D(m, fake), True) + LAMBDA_L1 * torch.nn.functional.l1_loss(fake.float(), real)).backward()
            opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def _node_totals(out: Path) -> dict[str, float]:
    tot: dict[str, float] = {"codec_s": 0.0, "wall_s": 0.0, "wire_bytes": 0.0, "samples": 0.0, "wait_s": 0.0,
                             "comm_wait_s": 0.0, "active_s": 0.0, "rtt_s": 0.0, "wire_s": 0.0}
    for f in sorted((out / "nodes").glob("*.json")):
        s = json.loads(f.read_text())
        for k in tot:
            tot[k] += float(s[k])
    return tot


def run_training_benchmark(quick: bool, json_out: Path | None, nodes: int = 4, batch: int = 8,
                           threads: int = 2) -> dict[str, Any]:
    console = Console(width=max(100, Console().width))
    sz = _sizes(quick)
    model = ModelConfig(image_size=sz["image_size"], g_width=sz["g_width"], d_width=sz["d_width"])
    with tempfile.TemporaryDirectory() as tmp, console.status("DGAN run…"):
        out = Path(tmp) / "dgan"
        # one G update per `nodes` feedbacks: the same total batch per G step as the centralized baseline
        run_local(RunConfig(nodes=nodes, steps=sz["steps"], out=out, scenes=nodes * 40, image_size=model.image_size,
                            g_width=model.g_width, d_width=model.d_width, batch_size=batch, synthesize=False,
                            checkpoint_every=0, sample_every=0, timeout=1800, feedback="l1", node_args=ONE_D_STEP,
                            extra_generator_args=["--update-every", str(nodes)]))
        dgan_rate = applied_rate(out)
        tot = _node_totals(out)
    with console.status("centralized pix2pix…"):
        central = central_rate(model, nodes * batch, steps=5 if quick else 15, threads=threads)
    result = {
        "dgan_samples_per_s": dgan_rate, "central_samples_per_s": central, "ratio": dgan_rate / central,
        # The honest communication share: each node's blocked time with a request out, times the share of its
        # round trips the wire and broker account for (round trip less the time the generator held the request,
        # from the generator's own timestamps), over the node's active time (first request to last feedback).
        "comm_share": tot["comm_wait_s"] / tot["active_s"] if tot["active_s"] else float("nan"),
        "wait_share": tot["wait_s"] / tot["active_s"] if tot["active_s"] else float("nan"),
        "wire_share_of_rtt": tot["wire_s"] / tot["rtt_s"] if tot["rtt_s"] else float("nan"),
        # what the old comm_share measured (encoding and sending at the node), now over the active time
        "codec_share": tot["codec_s"] / tot["active_s"] if tot["active_s"] else float("nan"),
        "wire_bytes_per_sample": tot["wire_bytes"] / tot["samples"] if tot["samples"] else float("nan"),
        "image_size": model.image_size, "nodes": nodes, "batch_per_node": batch, "central_threads": threads,
        "quick": quick,
    }
    table = Table(title="DGAN vs centralized pix2pix (same G, D and total batch; this machine)")
    for k in ("dgan_samples_per_s", "central_samples_per_s", "ratio", "comm_share", "wait_share", "wire_share_of_rtt",
              "codec_share", "wire_bytes_per_sample"):
        table.add_row(k, f"{result[k]:.3f}" if k != "wire_bytes_per_sample" else f"{result[k]:,.0f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result


def node_period(out: Path) -> float:
    """Median seconds between one node's consecutive feedbacks, over all nodes of a run."""
    fb = json.loads((out / "feedback.json").read_text())
    cols, rows = fb["columns"], fb["rows"]
    gaps: list[float] = []
    for node in {r[cols.index("node")] for r in rows}:
        times = sorted(r[cols.index("time")] for r in rows if r[cols.index("node")] == node)
        gaps += list(np.diff(times[len(times) // 3:]))  # after warm-up
    return float(statistics.median(gaps))


def run_straggler_benchmark(quick: bool, json_out: Path | None, nodes: int = 4, batch: int = 8) -> dict[str, Any]:
    console = Console(width=max(100, Console().width))
    sz = _sizes(quick)
    model = ModelConfig(image_size=sz["image_size"], g_width=sz["g_width"], d_width=sz["d_width"])
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Calibrate: how long a node's batch really takes here (D step + waiting for the shared generator).
        with console.status("calibration run without a slow node…"):
            calib = Path(tmp) / "calibration"
            run_local(RunConfig(nodes=nodes, steps=max(8, sz["steps"] // 2), out=calib, scenes=nodes * 40,
                                image_size=model.image_size, g_width=model.g_width, d_width=model.d_width,
                                batch_size=batch, synthesize=False, checkpoint_every=0, sample_every=0,
                                timeout=1800, node_args=ONE_D_STEP,
                                extra_generator_args=["--update-every", str(nodes)]))
            period = node_period(calib)
        delay = 3 * period  # the slow node then takes ~4x as long per batch as the others
        for mode in ("async", "sync"):
            with console.status(f"{mode} run with one slow node…"):
                out = Path(tmp) / mode
                run_local(RunConfig(nodes=nodes, steps=sz["steps"], out=out, scenes=nodes * 40,
                                    image_size=model.image_size, g_width=model.g_width, d_width=model.d_width,
                                    batch_size=batch, mode=mode, delays=[delay] + [0.0] * (nodes - 1),
                                    synthesize=False, checkpoint_every=0, sample_every=0, timeout=1800,
                                    node_args=ONE_D_STEP, extra_generator_args=["--update-every", str(nodes)]))
                rates[mode] = applied_rate(out)
    result = {"async_samples_per_s": rates["async"], "sync_samples_per_s": rates["sync"],
              "ratio": rates["async"] / rates["sync"], "node_batch_period_s": period, "slow_node_delay_s": delay,
              "quick": quick}
    table = Table(title=f"one node slowed by {delay:.2f} s per batch (~4x): applied samples/s")
    for k in ("async_samples_per_s", "sync_samples_per_s", "ratio"):
        table.add_row(k, f"{result[k]:.3f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
