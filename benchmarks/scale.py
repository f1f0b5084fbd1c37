"""`dgan bench scale`: many nodes on one broker and one generator, with light peers.

N light nodes (``benchmarks.light_node --many``, 32 to a process, each with
its own thread and broker connection) and the light generator
(``benchmarks.light_generator``, 0.5 ms per sample), on loopback, with 1 s
heartbeats (a node expires after 3 s of silence).  The offered load is what
CPU departments offer: each node spends 1 s on a batch (``--work-ms``), so N
nodes offer about N/2 to N requests per second (pipeline 2), under the light
generator's capacity of about 250; a closed loop of nodes with no work would
only measure how long the queue is.  Per N, over a measured window: the broker's
CPU per routed message (from /proc, against the message rate it publishes),
the round trip through the broker less the generator's time (each node's
own timestamps; round trips that ended inside the window: p50 and p99),
expiries of nodes that were alive all along (false expiries), the largest
STATUS the generator published, and the feedbacks the generator handled per
second.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from rich.console import Console
from rich.table import Table

from dgan import protocol as P
from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.data.shards import scenes_spec
from dgan.run import ProcessGroup

PER_PROCESS = 32
HEARTBEAT = 1.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sub(ports: Ports) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ports.pub_endpoint)
    return sock


def _statuses(sock: zmq.Socket, seconds: float) -> list[tuple[float, int, dict[str, Any]]]:
    """(time, bytes, meta) of every STATUS published for ``seconds``."""
    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if not sock.poll(int(left * 1000)):
            continue
        frames = sock.recv_multipart()
        try:
            msg = P.decode(frames[1:])  # after the topic frame
        except Exception:
            continue
        if msg.kind == P.Kind.STATUS:
            out.append((time.monotonic(), sum(len(f) for f in frames), msg.meta))
    return out


def run_one(n: int, window: float, tmp: Path, image_size: int = 32, work_ms: float = 1000.0,
            gen_ms_per_sample: float = 0.5) -> dict[str, Any]:
    ports = Ports.free()
    out = tmp / f"n{n}"
    (out / "logs").mkdir(parents=True)
    shard = out / "shard.json"
    shard.write_text(json.dumps(scenes_spec(list(range(16)), image_size)))
    group = ProcessGroup(out / "logs")  # one thread each; they end with the bench, a kill -9 of it too
    broker = group.start("broker", broker_args(ports, heartbeat=HEARTBEAT), 1)
    gen = group.start("generator", generator_args(
        ports, out, 10**9, image_size=image_size, heartbeat=HEARTBEAT,
        extra=["--update-every", "0", "--work-ms", str(gen_ms_per_sample)]), 1, module="benchmarks.light_generator")
    for k in range(math.ceil(n / PER_PROCESS)):
        many = min(PER_PROCESS, n - k * PER_PROCESS)
        group.start(f"nodes{k}", node_args(
            ports, f"h{k}", shard, image_size=image_size, batch_size=8, heartbeat=HEARTBEAT,
            extra=["--many", str(many), "--work-ms", str(work_ms), "--stats", str(out / "nodes" / f"h{k}.json")]),
            1, module="benchmarks.light_node")
    sub = _sub(ports)
    try:
        deadline = time.monotonic() + 120
        registered = flowing = False
        while time.monotonic() < deadline:  # every node registered with the broker, and feedback flowing
            for _, _, m in _statuses(sub, 1.0):
                if "broker" in m:
                    registered = m["broker"].get("nodes") == n
                elif m.get("generator", m).get("samples_applied", 0) > 0:
                    flowing = True
            if registered and flowing:
                break
        time.sleep(2 * HEARTBEAT)  # past the joins
        cpu0, t0 = _cpu_s(broker.pid), time.monotonic()
        got = _statuses(sub, window)
        cpu1, t1 = _cpu_s(broker.pid), time.monotonic()
        gen.terminate()  # the generator ends the run: run.json, GOODBYE to every node
        gen.wait(60)
    finally:
        group.stop_all(grace=20.0)
        sub.close()
    broker_st = [(t, m["broker"]) for t, _, m in got if "broker" in m]
    routed = sum(b["msgs_per_s"] for _, b in broker_st) * HEARTBEAT  # one rate per heartbeat interval
    gen_sizes = [size for _, size, m in got if "broker" not in m]
    applied = [(t, m.get("generator", m)["samples_applied"]) for t, _, m in got
               if "broker" not in m and "samples_applied" in m.get("generator", m)]
    nodes = [r for f in sorted((out / "nodes").glob("*.json")) for r in
             (json.loads(f.read_text()) if f.read_text().startswith("[") else [json.loads(f.read_text())])]
    # round trips that ended inside the window (one host: the nodes' monotonic clock is this process's)
    wires = np.array([w for r in nodes for w, at in zip(r.get("wire_recent_s", []), r.get("wire_recent_at", []),
                                                          strict=False) if t0 <= at <= t1]) * 1e3
    log = (out / "logs" / "broker.log").read_text()
    expired = len(re.findall(r"left \(no message for", log))
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    fb = run.get("counters", {})
    return {
        "nodes": n, "window_s": window,
        "registered": broker_st[-1][1].get("nodes") if broker_st else None,
        "broker_msgs_per_s": routed / window if window else float("nan"),
        "broker_cpu_share": (cpu1 - cpu0) / window,
        "broker_cpu_us_per_msg": (cpu1 - cpu0) / routed * 1e6 if routed else float("nan"),
        "wire_rtt_p50_ms": float(np.percentile(wires, 50)) if wires.size else float("nan"),
        "wire_rtt_p99_ms": float(np.percentile(wires, 99)) if wires.size else float("nan"),
        "wire_rtt_samples": int(wires.size),
        "false_expiries": expired,
        "status_bytes_max": max(gen_sizes, default=0),
        "status_limit_bytes": P.DEFAULT_LIMITS.max_header_bytes,
        # the generator's own count over the window (8 samples per feedback)
        "feedbacks_per_s": (applied[-1][1] - applied[0][1]) / 8 / (applied[-1][0] - applied[0][0])
        if len(applied) > 1 and applied[-1][0] > applied[0][0] else float("nan"),
        "dropped_stale": int(fb.get("dropped_stale", 0)),
        "node_errors": sum(sum(r.get("errors", {}).values()) for r in nodes),
    }


def run_scale_benchmark(quick: bool, json_out: Path | None, sizes: list[int] | None = None) -> dict[str, Any]:
    console = Console(width=max(110, Console().width))
    sizes = sizes or ([16, 32] if quick else [32, 64, 128])
    window = 10.0 if quick else 20.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            with console.status(f"{n} nodes…"):
                rows.append(run_one(n, window, Path(tmp)))
            r = rows[-1]
            console.log(f"{n} nodes: round trip p99 {r['wire_rtt_p99_ms']:.1f} ms, {r['false_expiries']} false "
                        "expiries")
    result = {"rows": rows, "heartbeat_s": HEARTBEAT, "node_work_ms": 1000.0, "generator_ms_per_sample": 0.5,
              "image_size": 32, "quick": quick, "msgpack": msgpack.version}
    cols = ("nodes", "registered", "broker_msgs_per_s", "broker_cpu_share", "broker_cpu_us_per_msg",
            "wire_rtt_p50_ms", "wire_rtt_p99_ms", "false_expiries", "status_bytes_max", "feedbacks_per_s",
            "node_errors")
    return report(console, f"one broker, one light generator, N light nodes (loopback, heartbeat {HEARTBEAT:g} s)",
                  cols, result, json_out)


def report(console: Console, title: str, cols: tuple[str, ...], result: dict[str, Any],
           json_out: Path | None) -> dict[str, Any]:
    """``result["rows"]`` as a rich table of ``cols``, and the whole result as JSON."""
    table = Table(title=title)
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for r in result["rows"]:
        table.add_row(*[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
