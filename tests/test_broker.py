"""The broker in its own process, over tcp://127.0.0.1, with fake peers."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from dgan import protocol as P
from dgan.msglog import Direction, ReadReport, iter_records
from dgan.transport.zmq_link import ZmqGeneratorLink, ZmqNodeLink
from tests.conftest import BrokerProcess, start_broker

FAST = {"heartbeat_interval": 0.3, "liveness": 3}


def recv_kind(link, kind: P.Kind, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = link.recv(0.1)
        if got is None:
            continue
        msg = got[1] if isinstance(got, tuple) else got
        if msg.kind == kind:
            return got
    raise AssertionError(f"no {kind.name} within {timeout} s")


def raw_dealer(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def recv_error(sock: zmq.Socket, timeout_ms: int = 3000) -> P.Message:
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if sock.poll(100):
            msg = P.decode(sock.recv_multipart())
            if msg.kind == P.Kind.ERROR:
                return msg
    raise AssertionError("no ERROR reply")


def echo_generator(link: ZmqGeneratorLink, stop: threading.Event, seen: dict[str, int]) -> None:
    """Answers every FAKE_REQUEST with FAKES holding the request's masks as floats."""
    while not stop.is_set():
        got = link.recv(0.05)
        if got is None:
            continue
        route, msg = got
        if msg.kind == P.Kind.FAKE_REQUEST:
            seen[route] = seen.get(route, 0) + 1
            fakes = np.repeat(msg.tensors["masks"][:, None].astype(np.float32), 3, axis=1)
            link.send(route, P.make(P.Kind.FAKES, "generator", reply_to=msg.msg_id, tensors={"fakes": fakes}))


def test_broker_routes_requests_and_replies_between_generator_and_three_nodes(broker_proc: BrokerProcess) -> None:
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    stop, seen = threading.Event(), {}
    t = threading.Thread(target=echo_generator, args=(gen, stop, seen), daemon=True)
    t.start()
    nodes = [ZmqNodeLink(broker_proc.node, f"node-{i}", **FAST) for i in range(3)]
    per_node = 30
    try:
        sent: dict[str, dict[int, int]] = {n.name: {} for n in nodes}
        for k in range(per_node):
            for i, n in enumerate(nodes):
                value = (i * 50 + k) % 256
                masks = np.full((2, 16, 16), value, np.uint8)
                msg = P.make(P.Kind.FAKE_REQUEST, n.name, tensors={"masks": masks})
                n.send(msg)
                sent[n.name][msg.msg_id] = value
        for n in nodes:
            got = 0
            while got < per_node:
                msg = recv_kind(n, P.Kind.FAKES)
                expected = sent[n.name].pop(msg.reply_to)  # KeyError = misrouted or duplicated
                assert np.all(msg.tensors["fakes"] == expected)
                got += 1
            assert sent[n.name] == {}
        assert seen == {n.name: per_node for n in nodes}
    finally:
        stop.set()
        t.join()
        for n in nodes:
            n.close()
        gen.close()


def test_silent_node_is_expired_and_generator_told(broker_proc: BrokerProcess) -> None:
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    silent = raw_dealer(broker_proc.node)
    silent.send_multipart(P.encode(P.make(P.Kind.HELLO, "quiet", meta={"role": "node"})))
    try:
        route, hello = recv_kind(gen, P.Kind.HELLO)
        assert route == "quiet" and hello.meta["role"] == "node"
        t0 = time.monotonic()
        route, left = recv_kind(gen, P.Kind.NODE_LEFT, timeout=5)
        assert left.meta["node"] == "quiet" and route == "quiet"
        assert time.monotonic() - t0 >= 0.5  # after 3 missed 0.3 s beats, not at once
    finally:
        silent.close()
        gen.close()


def test_garbage_from_one_peer_gets_an_error_and_others_keep_flowing(broker_proc: BrokerProcess) -> None:
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    stop, seen = threading.Event(), {}
    t = threading.Thread(target=echo_generator, args=(gen, stop, seen), daemon=True)
    t.start()
    good = ZmqNodeLink(broker_proc.node, "good", **FAST)
    bad = raw_dealer(broker_proc.node)
    rng = np.random.default_rng(0)
    try:
        huge_empty = P.encode(P.make(P.Kind.FAKE_REQUEST, "bad", tensors={"masks": np.zeros((1, 4, 4), np.uint8)}))
        header = msgpack.unpackb(huge_empty[1])
        header["tensors"] = [["masks", "uint8", [0, 2**31 - 1, 2**31 - 1, 2**31 - 1], 0]]
        huge_empty = [P.PROTOCOL_VERSION, msgpack.packb(header), b""]  # np.zeros of it raises ValueError
        hello = P.encode(P.make(P.Kind.HELLO, "../../etc", meta={"role": "node", "dataset_size": 1}))
        garbage = [[b"\x00"], [P.PROTOCOL_VERSION, b"\xc1\xc1"], [b"HTTP/1.1", b"GET /"],
                   [P.PROTOCOL_VERSION, rng.bytes(50), rng.bytes(1000)], [b"DGAN/9", b"x"], huge_empty,
                   [P.PROTOCOL_VERSION] + [b"x"] * 5000, hello]
        for frames in garbage:
            bad.send_multipart(frames)
            err = recv_error(bad)
            assert err.meta["code"] in {c.value for c in P.ErrorCode} and err.meta["reason"]
            good.send(P.make(P.Kind.FAKE_REQUEST, "good", tensors={"masks": np.zeros((1, 8, 8), np.uint8)}))
            recv_kind(good, P.Kind.FAKES)
        # A valid message from a peer that never said HELLO is refused as well.
        bad.send_multipart(P.encode(P.make(P.Kind.FAKE_REQUEST, "x", tensors={"masks": np.zeros((1, 4, 4),
                                                                                                np.uint8)})))
        assert recv_error(bad).meta["code"] == P.ErrorCode.NOT_REGISTERED
        assert seen["good"] == len(garbage)
        assert broker_proc.proc.poll() is None
    finally:
        stop.set()
        t.join()
        bad.close()
        good.close()
        gen.close()


def test_spoofed_sender_and_forbidden_kinds_are_refused(broker_proc: BrokerProcess) -> None:
    sock = raw_dealer(broker_proc.node)
    try:
        sock.send_multipart(P.encode(P.make(P.Kind.HELLO, "alice", meta={"role": "node"})))
        sock.send_multipart(P.encode(P.make(P.Kind.FAKE_REQUEST, "bob",
                                            tensors={"masks": np.zeros((1, 4, 4), np.uint8)})))
        assert recv_error(sock).meta["code"] == P.ErrorCode.SPOOFED_SENDER
        sock.send_multipart(P.encode(P.make(P.Kind.FAKES, "alice",
                                            tensors={"fakes": np.zeros((1, 3, 4, 4), np.float32)})))
        assert recv_error(sock).meta["code"] == P.ErrorCode.FORBIDDEN
        sock.send_multipart(P.encode(P.make(P.Kind.HELLO, "mallory", meta={"role": "generator"})))
        assert recv_error(sock).meta["code"] == P.ErrorCode.FORBIDDEN
    finally:
        sock.close()


def test_requests_without_a_generator_get_no_generator_error(broker_proc: BrokerProcess) -> None:
    node = ZmqNodeLink(broker_proc.node, "lonely", **FAST)
    try:
        node.send(P.make(P.Kind.FAKE_REQUEST, "lonely", tensors={"masks": np.zeros((1, 4, 4), np.uint8)}))
        err = recv_kind(node, P.Kind.ERROR)
        assert err.meta["code"] == P.ErrorCode.NO_GENERATOR
    finally:
        node.close()


def test_generator_learns_of_nodes_that_joined_before_it(broker_proc: BrokerProcess) -> None:
    node = ZmqNodeLink(broker_proc.node, "early", hello_meta={"dataset_size": 5}, **FAST)
    time.sleep(0.3)
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    try:
        route, hello = recv_kind(gen, P.Kind.HELLO)
        assert route == "early" and hello.meta["dataset_size"] == 5
    finally:
        node.close()
        gen.close()


def test_message_to_unknown_node_comes_back_as_unreachable(broker_proc: BrokerProcess) -> None:
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    try:
        time.sleep(0.2)
        msg = P.make(P.Kind.FAKES, "generator", tensors={"fakes": np.zeros((1, 3, 4, 4), np.float32)})
        gen.send("nobody", msg)
        _, err = recv_kind(gen, P.Kind.ERROR)
        assert err.meta["code"] == P.ErrorCode.UNREACHABLE and err.reply_to == msg.msg_id
        assert err.meta["node"] == "nobody"
    finally:
        gen.close()


def test_node_link_reregisters_after_broker_restart(tmp_path: Path) -> None:
    bp = start_broker(tmp_path)
    ports = [int(ep.rsplit(":", 1)[1]) for ep in (bp.node, bp.generator, bp.pub)]
    node = ZmqNodeLink(bp.node, "phoenix", **FAST)
    try:
        bp.proc.kill()
        bp.proc.wait()
        bp2 = start_broker(tmp_path, ports=ports)
        gen = ZmqGeneratorLink(bp2.generator, **FAST)
        t0 = time.monotonic()
        while True:
            node.recv(0.1)  # drives heartbeats and re-registration
            got = gen.recv(0.05)
            if got is not None and got[1].kind == P.Kind.HELLO and got[0] == "phoenix":
                break
            assert time.monotonic() - t0 < 10, "node did not re-register within 10 s"
        gen.close()
        bp2.proc.terminate()
        bp2.proc.wait(10)
    finally:
        node.close()


def test_record_log_holds_every_routed_message_and_sigterm_flushes_it(tmp_path: Path) -> None:
    log_path = tmp_path / "run.dgl"
    bp = start_broker(tmp_path, "--record", str(log_path))
    gen = ZmqGeneratorLink(bp.generator, **FAST)
    stop, seen = threading.Event(), {}
    t = threading.Thread(target=echo_generator, args=(gen, stop, seen), daemon=True)
    t.start()
    node = ZmqNodeLink(bp.node, "rec", **FAST)
    try:
        for _ in range(5):
            node.send(P.make(P.Kind.FAKE_REQUEST, "rec", tensors={"masks": np.ones((2, 8, 8), np.uint8)}))
            recv_kind(node, P.Kind.FAKES)
    finally:
        stop.set()
        t.join()
        node.close()
        gen.close()
    bp.proc.send_signal(signal.SIGTERM)
    assert bp.proc.wait(10) == 0
    report = ReadReport()
    records = list(iter_records(log_path, report))
    kinds = [(r.direction, P.decode(r.frames).kind) for r in records]
    assert kinds.count((Direction.FROM_NODE, P.Kind.FAKE_REQUEST)) == 5
    assert kinds.count((Direction.FROM_GENERATOR, P.Kind.FAKES)) == 5
    assert report.truncated_at is None and report.corrupt_at is None


def test_a_failing_message_log_stops_the_broker_with_a_clear_error(tmp_path: Path) -> None:
    from broker import Broker, BrokerConfig
    from broker.records import RecordingFailed
    from dgan.commands import free_ports

    node_port, gen_port, pub_port = free_ports(3)
    b = Broker(BrokerConfig(node_port=node_port, generator_port=gen_port, pub_port=pub_port,
                            record=tmp_path / "log.dgl", heartbeat_interval=0.2))

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    b.recorder._write = disk_full  # the next record fails as a full disk would
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            b.serve()
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert b.started.wait(5)
    sock = raw_dealer(f"tcp://127.0.0.1:{node_port}")
    try:
        for _ in range(3):  # the first record fails in the writer; the next append sees it
            sock.send_multipart(P.encode(P.make(P.Kind.HELLO, "n0", meta={"role": "node", "dataset_size": 1})))
            time.sleep(0.2)
        t.join(10)
    finally:
        sock.close()
    assert not t.is_alive(), "the broker went on routing without its log"
    assert failure and isinstance(failure[0], RecordingFailed) and "No space left" in str(failure[0])


def test_a_second_generator_is_refused_while_the_first_is_alive(broker_proc: BrokerProcess) -> None:
    gen = ZmqGeneratorLink(broker_proc.generator, **FAST)
    node = ZmqNodeLink(broker_proc.node, "n1", **FAST)
    intruder = raw_dealer(broker_proc.generator)
    try:
        recv_kind(gen, P.Kind.HELLO)  # the first generator is registered and knows n1
        intruder.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "intruder", meta={"role": "generator"}))])
        assert intruder.poll(3000)
        err = P.decode(intruder.recv_multipart()[1:])
        assert err.kind == P.Kind.ERROR and err.meta["code"] == P.ErrorCode.NAME_IN_USE
        node.send(P.make(P.Kind.FAKE_REQUEST, "n1", tensors={"masks": np.zeros((1, 8, 8), np.uint8)}))
        recv_kind(gen, P.Kind.FAKE_REQUEST)  # the node's masks still go to the first generator only
        assert not intruder.poll(500)
    finally:
        intruder.close()
        node.close()
        gen.close()


@pytest.mark.timeout(300)
def test_transport_bench_drives_the_broker_and_its_baselines_side_by_side() -> None:
    """Today's broker, the array-building one, the one on pyzmq's Python multipart calls, one with a deeper
    queue, one on glibc's malloc as it comes, one sending each message as it is routed, and zmq.proxy on the
    broker's malloc settings all route."""
    from benchmarks.transport import _Path, measure

    names = ["broker", "broker-arrays", "broker-pyzmq", "broker-hwm1000", "broker-glibc", "proxy-tuned",
             "broker-unbatched"]
    paths = [_Path(name) for name in names]
    try:
        rows = measure(paths, [1024], quick=True, repeats=1)
    finally:
        for p in paths:
            p.close()
    assert {r["path"] for r in rows} == set(names)
    assert all(r["msgs_per_s"] > 0 and 0 < r["rtt_p50_us"] <= r["rtt_p99_us"] for r in rows)
    assert all(0 < r["rtt_settled_p50_us"] <= r["rtt_settled_p99_us"] for r in rows)


def test_transport_bench_times_round_trips_apart_from_the_streams_after_an_idle_pause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path streams (and is timed right after), then the machine idles, then every path's round trips are
    timed again; ``rtt_settled_p50_us`` comes from that phase, ``rtt_p50_us`` (its old meaning) from the first;
    each repeat starts one path later; the profiles follow the round trips in order."""
    import benchmarks.transport as T

    events: list[tuple[str, ...]] = []
    in_stream_phase = {"on": True}

    hellos: list[str] = []

    class FakePath:
        def __init__(self, label: str) -> None:
            self.label, self.sock = label, label

        def hello(self) -> None:
            hellos.append(self.label)

    def stream(sock: str, payload: int, n: int) -> float:
        events.append(("stream", sock))
        in_stream_phase["on"] = True
        return 1000.0

    def rtts(sock: str, payload: int, n: int) -> list[float]:
        events.append(("rtt", sock))
        base = (900.0 if in_stream_phase["on"] else 300.0) + 10 * (len(events) > 7)  # the second repeat: +10
        return [base - (i // T.CHUNK) for i in range(n)]  # one step down per chunk

    def idle(seconds: float) -> None:
        events.append(("idle", str(seconds)))
        in_stream_phase["on"] = False

    monkeypatch.setattr(T, "_stream_rate", stream)
    monkeypatch.setattr(T, "_rtts", rtts)
    monkeypatch.setattr(T, "_idle", idle)
    monkeypatch.setattr(T, "_counts", lambda payload, quick: (10, 2 * 2 * T.CHUNK))  # 2 chunks per repeat
    paths = [FakePath("a"), FakePath("b")]
    rows = T.measure(paths, [1024], quick=True, repeats=2, settle_s=0.7)  # type: ignore[arg-type]
    assert events == [("stream", "a"), ("rtt", "a"), ("stream", "b"), ("rtt", "b"), ("idle", "0.7"), ("rtt", "a"),
                      ("rtt", "b"),
                      ("stream", "b"), ("rtt", "b"), ("stream", "a"), ("rtt", "a"), ("idle", "0.7"), ("rtt", "b"),
                      ("rtt", "a")]
    assert hellos == ["a", "b", "a", "b", "b", "a", "b", "a"]  # before each path's stream and its idle-first phase
    for r in rows:  # medians over both repeats
        assert r["rtt_settled_chunks_us"] == [305.0, 304.0] and r["rtt_chunks_us"] == [905.0, 904.0]
        assert 299.0 <= r["rtt_settled_p50_us"] <= 310.0 and 899.0 <= r["rtt_p50_us"] <= 910.0


def test_transport_bench_fails_on_an_error_or_silence_instead_of_waiting_for_ever() -> None:
    import zmq

    import benchmarks.transport as T

    ctx = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        with pytest.raises(RuntimeError, match=r"no echo within 0\.2 s"):
            T._wait_reply(client, timeout_s=0.2)
        client.send(b"hi")
        who = server.recv_multipart()[0]
        server.send_multipart([who, *P.encode(P.error("broker", P.ErrorCode.NOT_REGISTERED, "send HELLO first"))])
        with pytest.raises(RuntimeError, match="ERROR: send HELLO first"):
            T._wait_reply(client, timeout_s=5)
    finally:
        server.close(0)
        client.close(0)
        ctx.term()
