"""Chaos soak: nodes are killed (SIGKILL) and restarted at random while training runs.

Bounded in time; loopback only. Writes
``{"updates_applied", "feedback_dropped_stale", "duplicate_updates", "process_crashes", "nodes_killed"}``;
duplicate_updates and process_crashes must be 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dgan.run import ProcessGroup, RunConfig, free_ports, write_shards


def run_chaos(minutes: float = 1.0, nodes: int = 4, seed: int = 0, size: int = 32) -> dict[str, Any]:
    rng = random.Random(seed)
    out = Path(tempfile.mkdtemp(prefix="dgan-chaos-")) / "run"
    shards = write_shards(RunConfig(nodes=nodes, out=out, scenes=nodes * 8, image_size=size))
    node_port, gen_port, pub_port = free_ports(3)
    group = ProcessGroup(out / "logs")
    common = ["--heartbeat", "0.5", "--log-format", "plain"]
    killed: set[int] = set()
    kills = 0
    restarts: dict[str, int] = {}

    def start_node(i: int) -> subprocess.Popen[bytes]:
        restarts[f"node{i}"] = restarts.get(f"node{i}", -1) + 1
        return group.start(f"node{i}-{restarts[f'node{i}']}", [
            "node", "--name", f"node{i}", "--broker", f"tcp://127.0.0.1:{node_port}", "--data", str(shards[i]),
            "--image-size", str(size), "--batch-size", "2", *common], 1)

    try:
        group.start("broker", ["broker", "--node-port", str(node_port), "--generator-port", str(gen_port),
                               "--pub-port", str(pub_port), *common], 1)
        gen = group.start("generator", [
            "generator", "--broker", f"tcp://127.0.0.1:{gen_port}", "--out", str(out), "--steps", "100000000",
            "--image-size", str(size), "--g-width", "8", "--g-depth", "3", "--d-width", "8",
            "--checkpoint-every", "0", "--sample-every", "0", "--no-synthesize", *common], 1)
        live = {i: start_node(i) for i in range(nodes)}
        ready = time.monotonic() + 120  # on a loaded machine, starting torch takes a while: soak a running generator
        while "generator: run" not in (out / "logs" / "generator.log").read_text(errors="replace"):
            if time.monotonic() > ready or gen.poll() is not None:
                raise RuntimeError(f"the generator did not start; see {out / 'logs' / 'generator.log'}")
            time.sleep(0.2)
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 4.0))
            i = rng.randrange(nodes)
            proc = live[i]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed.add(proc.pid)
                kills += 1
            time.sleep(rng.uniform(0.2, 1.5))
            live[i] = start_node(i)
        gen.send_signal(signal.SIGTERM)
        gen.wait(60)
    finally:
        crashes = [name for name, p in group.procs.items()
                   if p.poll() is not None and p.pid not in killed and p.returncode not in (0, -signal.SIGTERM)]
        group.stop_all()
    summary = json.loads((out / "run.json").read_text())
    counters = summary["counters"]
    return {"updates_applied": summary["steps"], "samples_applied": summary["samples_applied"],
            "feedback_dropped_stale": counters.get("dropped_stale", 0),
            "duplicate_updates": counters.get("duplicate_updates", 0), "process_crashes": len(crashes),
            "crashed": crashes, "nodes_killed": kills, "minutes": minutes, "out": str(out)}


def run_chaos_benchmark(minutes: float, json_out: Path | None) -> dict[str, Any]:
    res = run_chaos(minutes)
    table = Table(title=f"chaos soak: {minutes} min, nodes killed -9 and restarted at random")
    for k in ("updates_applied", "samples_applied", "feedback_dropped_stale", "duplicate_updates",
              "process_crashes", "nodes_killed"):
        table.add_row(k, str(res[k]))
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2))
    return res
