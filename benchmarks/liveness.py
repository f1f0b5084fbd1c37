"""A slow department: one node needs ``slow_s`` seconds per batch (20 s, as a CPU at 256 px can), next to a fast one.

Broker, generator and both nodes run as processes with the default heartbeats
(2.5 s, expiry after 7.5 s). Writes ``{"slow_batches", "slow_feedbacks_received",
"slow_applied", "slow_dropped_stale", "slow_re_registrations", "slow_reconnects", "expiries"}``.
The target: feedbacks received >= batches finished, and 0 re-registrations.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.run import ProcessGroup, RunConfig, write_shards


def run_slow_node(slow_s: float = 20.0, batches: int = 4, size: int = 32) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="dgan-slow-")) / "run"
    shards = write_shards(RunConfig(nodes=2, out=out, scenes=32, image_size=size))
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    small = ["--g-depth", "3"]
    try:
        group.start("broker", broker_args(ports), 1)
        gen = group.start("generator", generator_args(ports, out, 10**8, image_size=size, g_width=8, d_width=8,
                                                      synthesize=False, checkpoint_every=0, sample_every=0,
                                                      extra=small), 1)
        for name, shard, extra in (("fast", shards[0], []),
                                   ("slow", shards[1], ["--delay", str(slow_s), "--max-batches", str(batches)])):
            group.start(name, node_args(ports, name, shard, image_size=size, batch_size=2, extra=[
                "--pipeline", "1", "--d-warmup", "0", "--stats", str(out / "nodes" / f"{name}.json"), *extra]), 1)
        # The slow node leaves by itself after its batches, having sent every feedback; then the run ends.
        group.procs["slow"].wait(180 + batches * slow_s * 3)
        time.sleep(1.0)
        gen.send_signal(signal.SIGTERM)
        gen.wait(120)
    finally:
        group.stop_all()
    run = json.loads((out / "run.json").read_text())
    slow_stats = json.loads((out / "nodes" / "slow.json").read_text())
    node = run["nodes"].get("slow", {})
    broker_log = (out / "logs" / "broker.log").read_text(errors="replace")
    return {"slow_s_per_batch": slow_s, "slow_batches": slow_stats["batches"],
            "slow_feedbacks_received": node.get("feedbacks", 0) + node.get("counts", {}).get("dropped_stale", 0),
            "slow_applied": node.get("feedbacks", 0), "slow_dropped_stale": node.get("counts", {}).get(
                "dropped_stale", 0), "slow_staleness_mean": node.get("staleness_mean"),
            "slow_re_registrations": slow_stats.get("link", {}).get("re_registrations", 0),
            "slow_reconnects": slow_stats.get("link", {}).get("reconnects", 0),
            "expiries": broker_log.count("no message for"), "fast_applied": run["nodes"]["fast"]["feedbacks"],
            "out": str(out)}


def run_slow_node_benchmark(quick: bool, json_out: Path | None) -> dict[str, Any]:
    res = run_slow_node(slow_s=20.0, batches=2 if quick else 5)
    table = Table(title=f"a node at {res['slow_s_per_batch']:.0f} s per batch beside a fast one (expiry 7.5 s)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k in ("slow_batches", "slow_feedbacks_received", "slow_applied", "slow_dropped_stale", "slow_staleness_mean",
              "slow_re_registrations", "slow_reconnects", "expiries", "fast_applied"):
        table.add_row(k, str(res[k]))
    Console().print(table)
    res["ok"] = (res["slow_feedbacks_received"] >= res["slow_batches"] > 0 and res["slow_re_registrations"] == 0
                 and res["expiries"] == 0)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2))
    return res
