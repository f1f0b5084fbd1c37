"""The broker's compiled-layer multipart helpers behave as pyzmq's send_multipart/recv_multipart do."""

from __future__ import annotations

import zmq

from dgan.transport.multipart import recv_frames, send_frames


def _pair(ctx: zmq.Context, kind_a: int = zmq.PAIR, kind_b: int = zmq.PAIR, name: str = "mp") -> tuple[zmq.Socket,
                                                                                                           zmq.Socket]:
    a, b = ctx.socket(kind_a), ctx.socket(kind_b)
    a.bind(f"inproc://{name}")
    b.connect(f"inproc://{name}")
    return a, b


def test_frames_sent_by_either_side_arrive_whole_and_equal() -> None:
    ctx = zmq.Context()
    try:
        a, b = _pair(ctx)
        parts = [b"id", b"", memoryview(b"\x01\x02"), zmq.Frame(b"x" * 70000), bytearray(b"last")]
        send_frames(a, parts)
        got = b.recv_multipart()
        assert got == [bytes(p) if not isinstance(p, zmq.Frame) else p.bytes for p in parts]
        a.send_multipart([b"one"])  # pyzmq's sugar to our receive, single frame too
        a.send_multipart([b"x", b"y", b"z"])
        assert [f.bytes for f in recv_frames(b)] == [b"one"]
        frames = recv_frames(b)
        assert [f.bytes for f in frames] == [b"x", b"y", b"z"]
        assert all(isinstance(f, zmq.Frame) for f in frames)
    finally:
        ctx.destroy(linger=0)


def test_nonblocking_receive_on_an_empty_socket_raises_again() -> None:
    ctx = zmq.Context()
    try:
        _, b = _pair(ctx, name="empty")
        try:
            recv_frames(b, int(zmq.NOBLOCK))
        except zmq.Again:
            pass
        else:
            raise AssertionError("recv_frames(NOBLOCK) on an empty socket must raise zmq.Again")
    finally:
        ctx.destroy(linger=0)


def test_router_mandatory_to_an_unknown_peer_raises_host_unreachable_and_sends_nothing() -> None:
    ctx = zmq.Context()
    try:
        router, dealer = _pair(ctx, zmq.ROUTER, zmq.DEALER, name="router")
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            send_frames(router, [b"nobody", b"payload"], int(zmq.NOBLOCK))
        except zmq.ZMQError as exc:
            assert exc.errno == zmq.EHOSTUNREACH
        else:
            raise AssertionError("a ROUTER_MANDATORY send to an unknown identity must fail")
        dealer.send(b"hello")
        identity = router.recv_multipart()[0]
        send_frames(router, [identity, b"a", b"b"], int(zmq.NOBLOCK))
        assert dealer.recv_multipart() == [b"a", b"b"]
        assert not dealer.poll(50)  # nothing half-sent from the refused message
    finally:
        ctx.destroy(linger=0)


def test_a_bad_frame_is_refused_before_anything_is_sent_so_the_next_message_arrives_alone() -> None:
    ctx = zmq.Context()
    try:
        a, b = _pair(ctx, name="bad")
        for bad in ([b"h1", "text is not a buffer"], [b"h1", 3]):
            try:
                send_frames(a, bad)
            except TypeError as exc:
                assert "frame 1" in str(exc)
            else:
                raise AssertionError(f"{bad!r} must be refused")
        try:
            send_frames(a, [])
        except ValueError:
            pass
        else:
            raise AssertionError("an empty message must be refused")
        send_frames(a, [b"h2", b"body"])
        assert [f.bytes for f in recv_frames(b)] == [b"h2", b"body"]  # not [h1, h2, body]
        assert not b.poll(50)
    finally:
        ctx.destroy(linger=0)
