"""Chaos soak: nodes, the broker and the generator are killed (SIGKILL) and restarted at random while training.

The broker records every message; the generator restarts with ``--resume``.
After the soak the generator must reach its step count, and the exchange
invariants are checked from the message log and the applied-feedback rows
(:mod:`dgan.invariants`): every FAKES answered at most once, only by its node,
each answer applied at most once. Writes ``{"invariants", "steps_reached",
"process_crashes", "kills", ...}``; the run passes when the invariants hold,
the steps are reached and nothing crashed.
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

import torch
from rich.console import Console
from rich.table import Table

from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.invariants import applied_rows, check_exchanges
from dgan.run import ProcessGroup, RunConfig, write_shards

HEARTBEAT = 0.5


def run_chaos(minutes: float = 1.0, nodes: int = 4, seed: int = 0, size: int = 32, finish_steps: int = 30,
              kill_services: bool = True, finish_timeout: float = 300.0) -> dict[str, Any]:
    """Soak for ``minutes`` (the generator's target is out of reach meanwhile); then the generator is restarted
    with ``--resume`` and a target ``finish_steps`` past its checkpoint, which it must reach with no more kills."""
    rng = random.Random(seed)
    steps = 10**8
    out = Path(tempfile.mkdtemp(prefix="dgan-chaos-")) / "run"
    shards = write_shards(RunConfig(nodes=nodes, out=out, scenes=nodes * 8, image_size=size))
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    log = out / "broker.dgl"
    starts: dict[str, int] = {}
    killed: set[int] = set()
    kills: dict[str, int] = {"node": 0, "broker": 0, "generator": 0}

    def start(role: str, args: list[str]) -> subprocess.Popen[bytes]:
        starts[role] = starts.get(role, -1) + 1
        return group.start(f"{role}-{starts[role]}", args, 1)

    def start_broker() -> subprocess.Popen[bytes]:
        return start("broker", broker_args(ports, record=log, heartbeat=HEARTBEAT))

    def start_generator() -> subprocess.Popen[bytes]:
        resume = (out / "checkpoints" / "latest.pt").exists()
        return start("generator", generator_args(
            ports, out, steps, image_size=size, g_width=8, d_width=8, resume=resume, synthesize=False,
            checkpoint_every=5, sample_every=0, heartbeat=HEARTBEAT, extra=["--g-depth", "3"]))

    def start_node(i: int) -> subprocess.Popen[bytes]:
        return start(f"node{i}", node_args(ports, f"node{i}", shards[i], image_size=size, batch_size=2,
                                           heartbeat=HEARTBEAT, extra=["--d-warmup", "0"]))

    def kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.add(proc.pid)

    reached = False
    try:
        live: dict[str, subprocess.Popen[bytes]] = {"broker": start_broker(), "generator": start_generator()}
        live.update({f"node{i}": start_node(i) for i in range(nodes)})
        ready = time.monotonic() + 120  # on a loaded machine, starting torch takes a while: soak a running generator
        while "generator: run" not in (out / "logs" / "generator-0.log").read_text(errors="replace"):
            if time.monotonic() > ready or live["generator"].poll() is not None:
                raise RuntimeError(f"the generator did not start; see {out / 'logs' / 'generator-0.log'}")
            time.sleep(0.2)
        victims = [f"node{i}" for i in range(nodes)] + (["broker", "generator"] if kill_services else [])
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end and live["generator"].poll() is None:
            time.sleep(rng.uniform(1.0, 4.0))
            who = rng.choice(victims)
            kill(live[who])
            kills["node" if who.startswith("node") else who] += 1
            time.sleep(rng.uniform(0.2, 1.5))
            live[who] = (start_broker() if who == "broker" else start_generator() if who == "generator"
                         else start_node(int(who[4:])))
        kill(live["generator"])  # the last kill: a resumed generator must now finish the run by itself
        kills["generator"] += 1
        saved = int(torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"])
        steps = saved + finish_steps
        gen = live["generator"] = start_generator()
        try:
            gen.wait(finish_timeout)
        except subprocess.TimeoutExpired:
            gen.send_signal(signal.SIGTERM)
            gen.wait(60)
        summary = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        reached = summary.get("steps", 0) >= steps
    finally:
        crashes = [name for name, p in group.procs.items()
                   if p.poll() is not None and p.pid not in killed and p.returncode not in (0, -signal.SIGTERM)]
        group.stop_all()
    feedback = out / "feedback.jsonl"
    check = check_exchanges(log, applied_rows(feedback) if feedback.exists() else ())
    return {"invariants": check.to_dict(), "invariants_ok": check.ok, "steps_target": steps,
            "steps_reached": summary.get("steps", 0), "reached": reached,
            "samples_applied": summary.get("samples_applied", 0),
            "feedback_dropped_stale": summary.get("counters", {}).get("dropped_stale", 0),
            "process_crashes": len(crashes), "crashed": crashes, "kills": kills,
            "nodes_killed": kills["node"], "minutes": minutes, "out": str(out),
            "ok": check.ok and reached and not crashes}


def run_chaos_benchmark(minutes: float, json_out: Path | None) -> dict[str, Any]:
    res = run_chaos(minutes)
    table = Table(title=f"chaos soak: {minutes} min; nodes, broker and generator killed -9 and restarted")
    table.add_column("measure")
    table.add_column("value", justify="right")
    inv = res["invariants"]
    for k, v in (("steps reached / target", f"{res['steps_reached']} / {res['steps_target']}"),
                 ("kills (node / broker / generator)",
                  f"{res['kills']['node']} / {res['kills']['broker']} / {res['kills']['generator']}"),
                 ("FAKES sent / answered / applied", f"{inv['fakes']} / {inv['answers']} / {inv['applied']}"),
                 ("answers to FAKES lost from the log (crash)", str(inv["unmatched_answers"])),
                 ("invariant violations", str(inv["violation_count"])),
                 ("process crashes", str(res["process_crashes"])),
                 ("feedback dropped stale", str(res["feedback_dropped_stale"]))):
        table.add_row(k, v)
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2))
    return res
