"""`dgan bench heartbeats`: 1,000 registered peers that only keep their leases alive.

One broker and the light generator as processes; ``--peers`` simulated nodes
in one more process (``python -m benchmarks.heartbeats peers``): each is a
DEALER socket that says HELLO once, then a HEARTBEAT every interval (random
phase), and notes the broker's heartbeats it receives.  Over a window after
every peer has registered, the bench measures the broker's CPU share and CPU
per heartbeat, expiries of peers that never went quiet (false expiries: the
broker's log, and NOT_REGISTERED answers the peers receive), the longest gap
between broker heartbeats at any peer inside the window (over ``liveness``
intervals a real node would re-register), and the generator's largest STATUS.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from rich.console import Console

from benchmarks.scale import _cpu_s, _statuses, _sub, report
from dgan import protocol as P
from dgan.commands import Ports, broker_args, generator_args
from dgan.run import ProcessGroup
from dgan.stop_signals import die_with_parent_from_env


def simulate_peers(endpoint: str, n: int, interval: float, seconds: float, out: Path, quiet: int = 0) -> None:
    """``n`` heartbeat-only nodes for ``seconds``; writes what they saw to ``out``.  The first ``quiet`` of them
    fall silent after their third broker heartbeat: they must expire (the check that expiries are seen)."""
    ctx = zmq.Context.instance()
    socks, hello = [], []
    for i in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
        hello.append(P.encode(P.make(P.Kind.HELLO, f"hb{i}", meta={"role": "node", "dataset_size": 1,
                                                                     "feedback": "adversarial"})))
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    rng = random.Random(0)
    t0 = time.monotonic()
    next_beat = [t0 + rng.random() * interval for _ in range(n)]
    last_in = [t0] * n
    gaps = [0.0] * n
    not_registered = [0] * n
    beats_in = [0] * n
    sent = 0
    for s, h in zip(socks, hello, strict=True):
        s.send_multipart(h)
    beat = [P.encode(P.make(P.Kind.HEARTBEAT, f"hb{i}")) for i in range(n)]
    stop, window = [], []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # the bench ends the peers after its window
    signal.signal(signal.SIGUSR1, lambda *_: window.append(1))  # ... and starts it: gaps count from then on
    end = t0 + seconds
    while (now := time.monotonic()) < end and not stop:
        if window and window[0] == 1:  # the join is over: the steady state's gaps only
            window[0] = 2
            last_in, gaps = [now] * n, [0.0] * n
        for i in range(n):
            if now >= next_beat[i] and not (i < quiet and beats_in[i] >= 3):
                socks[i].send_multipart(beat[i], zmq.NOBLOCK)
                next_beat[i] = now + interval
                sent += 1
        for s, _ in poller.poll(20):
            i = index[s]
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = time.monotonic()
                try:
                    msg = P.decode(frames)
                except P.ProtocolError:
                    continue
                if msg.kind == P.Kind.HEARTBEAT:
                    beats_in[i] += 1
                    if i < quiet and beats_in[i] > 3:
                        continue  # fallen silent: its gaps do not count
                    gaps[i] = max(gaps[i], t - last_in[i])
                    last_in[i] = t
                elif i >= quiet and msg.kind == P.Kind.ERROR and msg.meta.get("code") == P.ErrorCode.NOT_REGISTERED:
                    not_registered[i] += 1
                    s.send_multipart(hello[i])  # as a real node does
    out.write_text(json.dumps({"sent": sent, "max_broker_gap_s": max(gaps), "gaps": gaps,
                               "not_registered": sum(not_registered),
                               "peers_not_registered": sum(1 for x in not_registered if x)}))
    for s in socks:
        s.close()


def run_one(peers: int, interval: float, window: float, tmp: Path, quiet: int = 0) -> dict[str, Any]:
    """``quiet``: that many peers fall silent once registered, so the bench shows it sees real expiries."""
    ports = Ports.free()
    out = tmp / f"p{peers}"
    (out / "logs").mkdir(parents=True)
    group = ProcessGroup(out / "logs")  # they end with the bench, a kill -9 of it too
    broker = group.start("broker", broker_args(ports, heartbeat=interval), 1)
    gen = group.start("generator", generator_args(
        ports, out / "gen", 10**9, image_size=32, heartbeat=interval, extra=["--work-ms", "0.5"]), 1,
        module="benchmarks.light_generator")
    sub = _sub(ports)
    join_limit = 60.0
    sim = group.start("peers", ["peers", "--broker", ports.node_endpoint, "--n", str(peers),
                                "--interval", str(interval), "--seconds", str(join_limit + window + 4 * interval),
                                "--out", str(out / "peers.json"), "--quiet", str(quiet)], 1,
                      module="benchmarks.heartbeats")
    try:
        t_join = time.monotonic()
        deadline = t_join + join_limit
        registered = 0
        while time.monotonic() < deadline:
            st = [m for _, _, m in _statuses(sub, 1.0) if "broker" in m]
            if st:
                registered = st[-1]["broker"].get("nodes", 0)
                if registered >= peers - quiet:
                    break
        join_s = time.monotonic() - t_join
        time.sleep(2 * interval)
        sim.send_signal(signal.SIGUSR1)  # the window starts: the peers measure gaps from here
        cpu0, t0 = _cpu_s(broker.pid), time.monotonic()
        got = _statuses(sub, window)
        cpu1, t1 = _cpu_s(broker.pid), time.monotonic()
        gen_cpu = _cpu_s(gen.pid)
        sim.terminate()
        sim.wait(60)
    finally:
        group.stop_all(grace=20.0)
        sub.close()
    seen = json.loads((out / "peers.json").read_text()) if (out / "peers.json").exists() else {}
    broker_st = [m["broker"] for _, _, m in got if "broker" in m]
    gen_sizes = [size for _, size, m in got if "broker" not in m]
    gen_nodes = [m.get("generator", m).get("nodes_alive") for _, _, m in got if "broker" not in m]
    log = (out / "logs" / "broker.log").read_text()
    expired = [int(i) for i in re.findall(r"node hb(\d+) left \(no message for", log)]
    beats_in = peers / interval * (t1 - t0)
    return {
        "peers": peers, "heartbeat_s": interval, "window_s": round(t1 - t0, 2), "join_s": round(join_s, 2),
        "registered": registered, "registered_min_in_window": min((b.get("nodes", 0) for b in broker_st), default=0),
        "broker_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "broker_cpu_us_per_heartbeat": (cpu1 - cpu0) / beats_in * 1e6 if beats_in else float("nan"),
        "false_expiries": sum(1 for i in expired if i >= quiet),
        "expired_quiet": sum(1 for i in expired if i < quiet), "quiet": quiet,
        "not_registered_replies": seen.get("not_registered", -1),
        "max_broker_beat_gap_s": seen.get("max_broker_gap_s", float("nan")),
        "status_bytes_max": max(gen_sizes, default=0), "status_limit_bytes": P.DEFAULT_LIMITS.max_header_bytes,
        "generator_nodes_alive": max((g for g in gen_nodes if isinstance(g, int)), default=None),
        "generator_cpu_s_total": round(gen_cpu, 2),
    }


def run_heartbeat_benchmark(quick: bool, json_out: Path | None, peers: list[int] | None = None,
                            interval: float = 1.0) -> dict[str, Any]:
    console = Console(width=max(110, Console().width))
    sizes = peers or ([250] if quick else [250, 1000])
    window = 10.0 if quick else 20.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            with console.status(f"{n} heartbeat-only peers…"):
                rows.append(run_one(n, interval, window, Path(tmp)))
    result = {"rows": rows, "quick": quick, "heartbeat_s": interval,
              "expiry_s": 3 * interval, "note": "broker CPU per heartbeat: broker CPU over the window / "
              "heartbeats the peers would send in it at the nominal rate (the broker also sends one to each "
              "peer per interval)"}
    cols = ("peers", "registered", "registered_min_in_window", "join_s", "broker_cpu_share",
            "broker_cpu_us_per_heartbeat", "false_expiries", "not_registered_replies", "max_broker_beat_gap_s",
            "status_bytes_max")
    return report(console, f"heartbeat-only peers on one broker (loopback, heartbeat {interval:g} s, expiry "
                           f"after {3 * interval:g} s)", cols, result, json_out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="simulated heartbeat-only peers (dgan bench heartbeats)")
    ap.add_argument("command", choices=["peers"])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quiet", type=int, default=0)
    args = ap.parse_args(argv)
    simulate_peers(args.broker, args.n, args.interval, args.seconds, args.out, args.quiet)


if __name__ == "__main__":
    die_with_parent_from_env()  # the simulated peers: started by the bench, end with it
    main()
