"""Transport benchmark: the dgan broker against zmq.proxy and a direct connection.

Every path carries the same dgan messages over tcp loopback with the client,
the echo server and the broker/proxy each in its own process:

* ``direct``: client DEALER -> server ROUTER.
* ``proxy``: client DEALER -> zmq.proxy(ROUTER, DEALER) -> server DEALER.
* ``broker``: client DEALER (a node) -> dgan broker -> server DEALER (a generator).

Throughput streams N one-way messages and times until the server acknowledges
the last; round-trip latency sends one message and waits for its echo. Round
trips are timed twice: right after the path's own stream (``rtt_p50_us``, as
before session 31), and in a phase of their own once every stream has ended and
the machine has idled for ``settle_s`` (``rtt_settled_p50_us``, as netperf runs
TCP_RR apart from TCP_STREAM). A process that has just run hot is woken more
slowly for about 0.2 s (docs/results/wan.md, session 31), so the first figure
also charges a path for its stream's CPU; the idle pause is not neutral either
(a path's first round trips wake idle CPUs). The paths take turns being first.
A broker path re-registers (one HELLO through the broker) before each phase.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
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
from dgan.commands import free_ports

SIZES = [1024, 64 * 1024, 1024 * 1024, 4 * 1024 * 1024]
HEARTBEAT = 2.5
SETTLE_S = 1.0  # idle before the round-trip phase: the after-stream slowdown measured here lasts about 0.2 s
REPLY_TIMEOUT_S = 30.0  # a wait for one echo (a 4 MiB stream's last reply takes well under a second here)
CHUNK = 50  # round trips per point of the profiles (about 15 ms at 1 KiB here)
_idle = time.sleep  # the pause before the round-trip phase (a test replaces it, not time.sleep for everyone)


def _request(payload: int, reply: bool) -> list[Any]:
    masks = np.full((1, 1, payload), 2, np.uint8)  # not binary: it travels at its full size, never packed
    return P.encode(P.Message(P.Kind.FAKE_REQUEST, "bench", msg_id=1, meta={"reply": reply},
                              tensors={"masks": masks}))


def _echo_server(path: str, endpoint: str) -> None:
    """Echo server: replies FAKES carrying the request's bytes when asked to."""
    ctx = zmq.Context()
    if path == "direct":
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(endpoint)
    else:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
    sock.setsockopt(zmq.LINGER, 0)
    beat = [b"", *P.encode(P.make(P.Kind.HEARTBEAT, "bench-server"))]
    if path == "broker":
        sock.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "bench-server", meta={"role": "generator"}))])
    last_beat = time.monotonic()
    while True:
        if path == "broker" and time.monotonic() - last_beat > HEARTBEAT / 2:
            sock.send_multipart(beat)
            last_beat = time.monotonic()
        if not sock.poll(500):
            continue
        frames = sock.recv_multipart(copy=False)
        envelope, body = frames[0], frames[1:]
        if len(body) < 3:
            if len(body) == 1 and body[0].bytes == b"STOP":
                return
            continue  # broker heartbeats, forwarded HELLOs
        header = msgpack.unpackb(body[1].buffer)
        if not header.get("meta", {}).get("reply"):
            continue
        data = body[2]
        n = len(data.buffer)
        reply_header = msgpack.packb({"kind": int(P.Kind.FAKES), "run": "", "sender": "bench-server", "id": 2,
                                      "reply_to": header["id"], "step": 0, "time": 0.0,
                                      "tensors": [["fakes", "uint8", [1, 1, 1, n], n]], "meta": {}})
        sock.send_multipart([envelope, P.PROTOCOL_VERSION, reply_header, data], copy=False)


def _proxy(front: str, back: str, tuned: bool = False) -> None:
    """``tuned``: with the glibc malloc thresholds every ``dgan`` command sets (the same allocator as the broker)."""
    if tuned:
        from dgan.malloc_tuning import tune_malloc

        tune_malloc(environ={})
    ctx = zmq.Context()
    f = ctx.socket(zmq.ROUTER)
    f.bind(front)
    b = ctx.socket(zmq.DEALER)
    b.bind(back)
    zmq.proxy(f, b)


def _broker(node_port: int, gen_port: int, pub_port: int, record: str | None, variant: str = "broker") -> None:
    """``variant``: ``broker``, as ``dgan broker`` runs it (glibc malloc tuned, see :mod:`dgan.malloc_tuning`), or
    a baseline: ``broker-arrays`` builds every tensor, ``broker-pyzmq`` uses pyzmq's Python multipart calls,
    ``broker-hwmN`` queues N messages per socket instead of 64 (zmq's default is 1000), ``broker-glibc`` leaves
    glibc's malloc as it comes, ``broker-unbatched`` sends each message to the generator as soon as it is routed
    (a burst of 1)."""
    from broker import Broker, BrokerConfig
    from dgan.malloc_tuning import tune_malloc

    if variant != "broker-glibc":  # whatever this shell's environment says: the rows must be what they are named
        tune_malloc(environ={})

    hwm = int(variant.removeprefix("broker-hwm")) if variant.startswith("broker-hwm") else BrokerConfig.hwm
    cfg = BrokerConfig(node_port=node_port, generator_port=gen_port, pub_port=pub_port,
                       heartbeat_interval=HEARTBEAT, record=Path(record) if record else None, hwm=hwm,
                       build_arrays=variant == "broker-arrays", pyzmq_multipart=variant == "broker-pyzmq",
                       send_burst=1 if variant == "broker-unbatched" else BrokerConfig.send_burst)
    Broker(cfg).serve()


def _stream_rate(sock: zmq.Socket, payload: int, n_stream: int) -> float:
    stream = _request(payload, False)
    last = _request(payload, True)
    t0 = time.perf_counter()
    for _ in range(n_stream - 1):
        sock.send_multipart(stream, copy=False)
    sock.send_multipart(last, copy=False)
    _wait_reply(sock)
    return n_stream / (time.perf_counter() - t0)


def _rtts(sock: zmq.Socket, payload: int, n_rtt: int) -> list[float]:
    req = _request(payload, True)
    out = []
    for _ in range(n_rtt):
        t0 = time.perf_counter()
        sock.send_multipart(req, copy=False)
        _wait_reply(sock)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _wait_reply(sock: zmq.Socket, timeout_s: float = REPLY_TIMEOUT_S) -> None:
    """Until the echo's FAKES; an ERROR (a broker that forgot this node, say) or silence fails the bench, never
    hangs it."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(left * 1000):
            raise RuntimeError(f"no echo within {timeout_s:g} s")
        frames = sock.recv_multipart(copy=False)
        if len(frames) < 2:
            continue
        header = msgpack.unpackb(frames[1].buffer)
        if header.get("kind") == P.Kind.FAKES:
            return
        if header.get("kind") == P.Kind.ERROR:
            raise RuntimeError(f"the path answered ERROR: {header.get('meta', {}).get('reason')}")


def _counts(payload: int, quick: bool) -> tuple[int, int]:
    budget_bytes = (64 if quick else 256) * 1024 * 1024
    n_stream = int(min(20000 if quick else 50000, max(50, budget_bytes // payload)))
    n_rtt = int(min(1000 if quick else 3000, max(50, budget_bytes // 4 // payload)))
    return n_stream, n_rtt


class _Path:
    """One path's processes and the client socket that drives it."""

    def __init__(self, path: str, record_dir: str | None = None) -> None:
        self.label = "broker+record" if record_dir else path
        ctx_mp = mp.get_context("spawn")
        a, b, c = free_ports(3)
        client_ep = f"tcp://127.0.0.1:{a}"
        back = f"tcp://127.0.0.1:{b}"
        if path == "direct":
            targets: list[tuple[Any, tuple[Any, ...]]] = [(_echo_server, (path, client_ep))]
        elif path.startswith("proxy"):
            targets = [(_proxy, (client_ep, back, path == "proxy-tuned")), (_echo_server, ("proxy", back))]
        else:
            record = str(Path(record_dir) / "bench.dgl") if record_dir else None
            targets = [(_broker, (a, b, c, record, path)), (_echo_server, ("broker", back))]
        self.procs = [ctx_mp.Process(target=t, args=args, daemon=True) for t, args in targets]
        for p in self.procs:
            p.start()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, int(REPLY_TIMEOUT_S * 1000))  # a dead path fails the bench, never hangs it
        self.sock.connect(client_ep)
        self.is_broker = path.startswith("broker")
        self.hello()
        warm = _request(1024, True)
        deadline = time.monotonic() + 60
        while True:  # wait until the whole path answers
            self.sock.send_multipart(warm)
            if self.sock.poll(1000):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: no answer through the path")
        while self.sock.poll(300):
            self.sock.recv_multipart()

    def hello(self) -> None:
        """Register with the broker (again): an idle node expires after 3 heartbeats, as any node would."""
        if self.is_broker:
            self.sock.send_multipart(P.encode(P.make(P.Kind.HELLO, "bench", meta={"role": "node"})))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
        for p in self.procs:
            p.terminate()
            p.join(5)


def measure(paths: list[_Path], sizes: list[int], quick: bool, repeats: int = 3,
            settle_s: float = SETTLE_S) -> list[dict[str, Any]]:
    """Round-robin over the paths for every repeat, each repeat starting one path later, so noise and being first
    hit them alike; round trips right after each stream, then again in their own phase after ``settle_s`` of idle
    (module docstring); with ``repeats`` a multiple of the path count every path goes first equally often. The
    profiles: the median of each run of :data:`CHUNK` round trips, in order, medians over the repeats (empty where
    a repeat has fewer: large payloads)."""
    rows = []
    for payload in sizes:
        n_stream, n_rtt = _counts(payload, quick)
        per_repeat = max(10, n_rtt // repeats)
        rates: dict[str, list[float]] = {p.label: [] for p in paths}
        settled: dict[str, list[list[float]]] = {p.label: [] for p in paths}
        after_stream: dict[str, list[list[float]]] = {p.label: [] for p in paths}
        for r in range(repeats):
            turn = paths[r % len(paths):] + paths[:r % len(paths)]
            for p in turn:
                p.hello()
                rates[p.label].append(_stream_rate(p.sock, payload, n_stream))
                after_stream[p.label].append(_rtts(p.sock, payload, per_repeat))
            _idle(settle_s)
            for p in turn:
                p.hello()  # the streams and the paths before may have outlasted a node's lease
                settled[p.label].append(_rtts(p.sock, payload, per_repeat))
        for p in paths:
            rate = statistics.median(rates[p.label])
            row = {"path": p.label, "payload": payload, "msgs_per_s": rate, "gb_per_s": rate * payload / 1e9}
            for name, runs in (("rtt", after_stream[p.label]), ("rtt_settled", settled[p.label])):
                q = np.percentile([x for run in runs for x in run], [50, 99])
                row |= {f"{name}_p50_us": float(q[0]), f"{name}_p99_us": float(q[1]),
                        f"{name}_chunks_us": _profile(runs)}
            rows.append(row)
    return rows


def _profile(runs: list[list[float]]) -> list[float]:
    """Per :data:`CHUNK` round trips in order: the chunk's median, then the median over the repeats."""
    chunks = len(min(runs, key=len)) // CHUNK
    return [float(statistics.median(statistics.median(run[c * CHUNK:(c + 1) * CHUNK]) for run in runs))
            for c in range(chunks)]


def run_transport_benchmark(quick: bool = False, json_out: Path | None = None, with_record: bool = False,
                            sizes: list[int] | None = None, with_arrays: bool = False,
                            with_pyzmq: bool = False, repeats: int = 3,
                            broker_hwm: list[int] | None = None, with_malloc: bool = False,
                            with_unbatched: bool = False, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """Baselines beside today's broker: ``with_arrays``, the broker building every tensor as an array (before
    header-only validation); ``with_pyzmq``, the broker on pyzmq's Python multipart calls (before the compiled
    layer); ``with_malloc``, the broker with glibc's malloc as it comes, and zmq.proxy with the broker's;
    ``with_unbatched``, the broker sending each message to the generator as soon as it is routed. ``settle_s``:
    idle before the round-trip phase (:func:`measure`)."""
    sizes = sizes or SIZES
    console = Console(width=max(120, Console().width))
    baselines = [*(["broker-arrays"] if with_arrays else []), *(["broker-pyzmq"] if with_pyzmq else []),
                 *(f"broker-hwm{n}" for n in broker_hwm or []),
                 *(["broker-glibc", "proxy-tuned"] if with_malloc else []),
                 *(["broker-unbatched"] if with_unbatched else [])]
    with tempfile.TemporaryDirectory() as tmp, console.status("measuring…"):
        paths = [_Path(name) for name in ("direct", "proxy", "broker", *baselines)]
        if with_record:
            paths.append(_Path("broker", record_dir=tmp))
        try:
            rows = measure(paths, sizes, quick, repeats, settle_s)
        finally:
            for p in paths:
                p.close()
    table = Table(title=f"dgan transport benchmark (tcp loopback, medians of {repeats}; round trips right after "
                        f"each stream, and after {settle_s:g} s idle)")
    for col in ("path", "payload", "msgs/s", "GB/s", "RTT p50 µs", "RTT p99 µs", "RTT p50 µs, idle before",
                "vs proxy (thr / p50 / p50 idle before)"):
        table.add_column(col, justify="right")
    proxy = {r["payload"]: r for r in rows if r["path"] == "proxy"}
    for r in rows:
        ref = proxy[r["payload"]]
        table.add_row(r["path"], _size(r["payload"]), f"{r['msgs_per_s']:,.0f}", f"{r['gb_per_s']:.3f}",
                      f"{r['rtt_p50_us']:.0f}", f"{r['rtt_p99_us']:.0f}", f"{r['rtt_settled_p50_us']:.0f}",
                      f"{r['msgs_per_s'] / ref['msgs_per_s']:.2f}x / {r['rtt_p50_us'] / ref['rtt_p50_us']:.2f}x / "
                      f"{r['rtt_settled_p50_us'] / ref['rtt_settled_p50_us']:.2f}x")
    console.print(table)
    out = {"rows": rows, "quick": quick, "repeats": repeats, "settle_s": settle_s, "chunk": CHUNK,
           "rtt": {"rtt_p50_us": "right after the path's own stream (the measure before session 31)",
                   "rtt_settled_p50_us": f"in a phase of its own, after every stream and {settle_s:g} s idle"}}
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=2))
        console.print(f"wrote {json_out}")
    return out


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"
