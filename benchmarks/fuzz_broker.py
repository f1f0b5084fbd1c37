"""Fuzz a live broker and generator with malformed and hostile messages (loopback only, bounded).

Starts a broker, a generator and one honest node as processes, then sends N bad
messages from rotating fuzz identities: random frames, truncated headers, lying
tensor descriptors, huge declared sizes, wrong kinds and versions, and
well-formed but hostile requests and feedback (wrong shapes, NaN, unknown ids).
It checks that nothing crashed, every bad message drew an ERROR, the honest
node's training kept flowing, and the broker's memory stayed bounded.

    python -m benchmarks.fuzz_broker --count 10000 --seconds 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from dgan import protocol as P
from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.run import ProcessGroup


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _valid(kind: P.Kind, sender: str, size: int, **meta: Any) -> list[bytes]:
    tensors: dict[str, np.ndarray] = {}
    if kind == P.Kind.FAKE_REQUEST:
        tensors = {"masks": np.zeros((2, size, size), np.uint8)}
    elif kind == P.Kind.FEEDBACK:
        tensors = {"grad": np.zeros((2, 3, size, size), np.float32)}
        meta.setdefault("losses", {})
    return [bytes(P.frame_view(f)) for f in P.encode(P.make(kind, sender, meta=meta, tensors=tensors))]


def _header(frames: list[bytes], **changes: Any) -> list[bytes]:
    h = msgpack.unpackb(frames[1], raw=False)
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


def mutations(rng: np.random.Generator, sender: str, size: int) -> list[tuple[str, list[bytes], bool]]:
    """(category, frames, needs_hello) for one round of every category."""
    good_req = _valid(P.Kind.FAKE_REQUEST, sender, size)
    good_fb = _valid(P.Kind.FEEDBACK, sender, size)
    return [
        ("random_frames", [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))], False),
        ("truncated_header", [good_req[0], good_req[1][: int(rng.integers(1, len(good_req[1])))], good_req[2]],
         False),
        ("wrong_version", [b"DGAN/9", *good_req[1:]], False),
        ("lying_descriptor", _header(good_req, tensors=[["masks", "uint8", [2, size, size], 7]]), False),
        ("huge_declared_size", _header(good_req, tensors=[["masks", "uint8", [2**30, 2**30, 2], 2**61]]), False),
        ("wrong_dtype", _header(good_req, tensors=[["masks", "float64", [2, size, size], 16 * size * size]]), False),
        ("unknown_kind", _header(good_req, kind=77), False),
        ("forbidden_kind", [bytes(P.frame_view(f)) for f in P.encode(P.make(P.Kind.WELCOME, sender,
                                                                             meta={"config": {}}))], True),
        ("spoofed_sender", _header(good_req, sender="honest"), True),
        ("wrong_mask_size", _valid(P.Kind.FAKE_REQUEST, sender, size // 2), True),
        ("feedback_unknown_request", _header(good_fb, reply_to=int(rng.integers(1, 2**40))), True),
        ("frame_flood", [*good_req[:2], *([b"x" * 64] * 2000)], False),
        ("masks_chunk_lie", [bytes(P.frame_view(f)) for f in P.encode(P.make(
            P.Kind.MASKS, sender, meta={"chunk": 0, "chunks": 10**6},
            tensors={"masks": np.zeros((4, size, size), np.uint8)}))], True),
    ]


def _nan_feedback_exchange(sock: zmq.Socket, name: str, size: int) -> tuple[bool, str]:
    """Ask for real fakes, answer with a NaN gradient: the generator must refuse it with an ERROR."""
    sock.send_multipart(_valid(P.Kind.FAKE_REQUEST, name, size))
    end = time.monotonic() + 10
    fakes_id, run_id = None, ""
    while fakes_id is None and time.monotonic() < end:
        if sock.poll(200):
            try:
                msg = P.decode(sock.recv_multipart())
            except P.ProtocolError:
                continue
            if msg.kind == P.Kind.FAKES:
                fakes_id, run_id = msg.msg_id, msg.run_id
    if fakes_id is None:
        return False, "no fakes"
    nan = P.make(P.Kind.FEEDBACK, name, run_id=run_id, reply_to=fakes_id, meta={"losses": {}},
                 tensors={"grad": np.full((2, 3, size, size), np.nan, np.float32)})
    sock.send_multipart(P.encode(nan))
    while time.monotonic() < end:
        if sock.poll(200):
            try:
                msg = P.decode(sock.recv_multipart())
            except P.ProtocolError:
                continue
            if msg.kind == P.Kind.ERROR and msg.reply_to == nan.msg_id:
                return True, msg.meta["reason"]
    return False, "no error for the NaN feedback"


def run_fuzz(count: int = 10_000, seconds: float = 300.0, memory_bound_mb: float = 400.0,
             size: int = 32, baseline_s: float = 10.0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dgan-fuzz-"))
    ports = Ports.free()
    group = ProcessGroup(tmp / "logs")
    quiet = ["--log-level", "ERROR"]
    shard = tmp / "honest.json"
    shard.write_text(json.dumps({"kind": "scenes", "seeds": list(range(8)), "size": size}))
    result: dict[str, Any] = {"sent": 0, "errors_received": 0, "by_category": {}, "missing_errors": 0}
    ctx = zmq.Context.instance()
    try:
        broker = group.start("broker", broker_args(ports, heartbeat=1.0, extra=quiet), 1)
        gen = group.start("generator", generator_args(
            ports, tmp / "run", 1_000_000, image_size=size, g_width=8, d_width=8, synthesize=False,
            checkpoint_every=0, sample_every=0, heartbeat=1.0, extra=["--g-depth", "3", *quiet]), 1)
        honest = group.start("honest", node_args(ports, "honest", shard, image_size=size, batch_size=2, heartbeat=1.0,
                                                 extra=["--stats", str(tmp / "honest.json.stats"), *quiet]), 1)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        sub.connect(ports.pub_endpoint)

        def honest_batches() -> int:
            latest = -1
            while sub.poll(0):
                frames = sub.recv_multipart()
                try:
                    meta = P.decode(frames[1:]).meta
                except P.ProtocolError:
                    continue
                if "nodes" in meta and "honest" in meta["nodes"]:
                    latest = meta["nodes"]["honest"]["batches"]
            return latest

        deadline = time.monotonic() + 120
        before = -1
        while before <= 0:  # wait until honest training flows
            before = max(before, honest_batches())
            if time.monotonic() > deadline:
                raise RuntimeError("the honest node never trained")
            time.sleep(0.2)
        t_base, base_start = time.monotonic(), before
        while time.monotonic() - t_base < baseline_s:  # the honest rate with no fuzzer
            before = max(before, honest_batches())
            time.sleep(0.2)
        base_rate = (before - base_start) / (time.monotonic() - t_base)
        rng = np.random.default_rng(0)
        by_cat: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        start = time.monotonic()
        peak_rss, gen_peak_rss = rss_mb(broker.pid), rss_mb(gen.pid)
        gen_rss_before = gen_peak_rss
        cpu0 = {"fuzzer": time.process_time(), "broker": cpu_s(broker.pid), "generator": cpu_s(gen.pid),
                "honest": cpu_s(honest.pid)}
        fuzz_round = 0
        while result["sent"] < count and time.monotonic() - start < seconds:
            name = f"fuzz{fuzz_round}"  # a fresh name each round: many names, and few bad messages per name
            fuzz_round += 1
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 2000)
            sock.connect(ports.node_endpoint)
            sock.send_multipart(_valid(P.Kind.HELLO, name, size, role="node", dataset_size=1))
            expected = 0
            for cat, frames, _ in mutations(rng, name, size):
                sock.send_multipart(frames)
                by_cat[cat] += 1
                expected += 1
                result["sent"] += 1
            got = 0
            end = time.monotonic() + 10
            while got < expected and time.monotonic() < end:
                if not sock.poll(200):
                    continue
                try:
                    msg = P.decode(sock.recv_multipart())
                except P.ProtocolError:
                    continue
                if msg.kind == P.Kind.ERROR:
                    got += 1
                    errors[P.ErrorCode(msg.meta["code"]).name] += 1
            result["missing_errors"] += expected - got
            if fuzz_round % 10 == 1:
                ok, reason = _nan_feedback_exchange(sock, name, size)
                by_cat["feedback_nan"] += 1
                result["sent"] += 1
                if ok and "NaN" in reason:
                    errors["REJECTED"] += 1
                else:
                    result["missing_errors"] += 1
            sock.close()
            peak_rss = max(peak_rss, rss_mb(broker.pid))
            gen_peak_rss = max(gen_peak_rss, rss_mb(gen.pid))
            for name_, proc in (("broker", broker), ("generator", gen), ("honest", honest)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name_} exited with {proc.returncode} during the fuzz")
        fuzz_s = time.monotonic() - start
        cpu1 = {"fuzzer": time.process_time(), "broker": cpu_s(broker.pid), "generator": cpu_s(gen.pid),
                "honest": cpu_s(honest.pid)}
        time.sleep(2.5)
        after = honest_batches()
        fuzz_rate = (after - before) / (fuzz_s + 2.5)
        result.update({
            "errors_received": sum(errors.values()), "errors_by_code": dict(errors), "by_category": dict(by_cat),
            "seconds": round(time.monotonic() - start, 1), "honest_batches_before": before,
            "honest_batches_after": after, "broker_peak_rss_mb": round(peak_rss, 1),
            "generator_peak_rss_mb": round(gen_peak_rss, 1), "generator_rss_before_mb": round(gen_rss_before, 1),
            "cpu_cores_used_during_fuzz": {k: round((cpu1[k] - cpu0[k]) / fuzz_s, 2) for k in cpu0},
            "honest_batches_per_s_baseline": round(base_rate, 3),
            "honest_batches_per_s_fuzzed": round(fuzz_rate, 3),
            "honest_throughput_ratio": round(fuzz_rate / base_rate, 3) if base_rate else None,
            "memory_bound_mb": memory_bound_mb,
            "crashed": [n for n, p in group.procs.items() if p.poll() is not None],
        })
        sub.close()
    finally:
        group.stop_all()
    result["ok"] = (not result.get("crashed") and result["missing_errors"] == 0
                    and result.get("honest_batches_after", 0) > result.get("honest_batches_before", 0)
                    and result.get("broker_peak_rss_mb", 0) <= memory_bound_mb and result["sent"] >= count)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--memory-mb", type=float, default=400.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    res = run_fuzz(args.count, args.seconds, args.memory_mb)
    table = Table(title="fuzz: broker + generator + one honest node")
    for k in ("sent", "errors_received", "missing_errors", "honest_batches_before", "honest_batches_after",
              "honest_batches_per_s_baseline", "honest_batches_per_s_fuzzed", "honest_throughput_ratio",
              "broker_peak_rss_mb", "generator_peak_rss_mb", "crashed", "seconds", "ok"):
        table.add_row(k, str(res.get(k)))
    Console().print(table)
    Console().print(res.get("errors_by_code"))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
