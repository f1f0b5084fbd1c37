"""ZeroMQ links to the broker, for nodes and for the generator.

ZeroMQ reconnects sockets by itself but not registrations: each link sends
HELLO on connect, heartbeats when it has been quiet, watches the broker's
heartbeats, and when the broker has been silent for ``liveness`` intervals (or
says NOT_REGISTERED, as a restarted broker does) it opens a fresh socket and
says HELLO again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from dgan import protocol as P

log = logging.getLogger("dgan.transport")


class _BrokerConnection:
    """A DEALER socket to the broker with registration and liveness."""

    routed: bool = False  # the generator side carries a routing frame

    def __init__(self, endpoint: str, name: str, role: str, hello_meta: dict[str, Any] | None = None,
                 heartbeat_interval: float = 2.5, liveness: int = 3, limits: P.Limits = P.DEFAULT_LIMITS,
                 hwm: int = 64, context: zmq.Context | None = None,
                 socket_setup: Callable[[zmq.Socket], None] | None = None, send_timeout: float = 2.0) -> None:
        self.endpoint = endpoint
        self.name = name
        self.role = role
        self.hello_meta = dict(hello_meta or {})
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.limits = limits
        self.hwm = hwm
        self.ctx = context or zmq.Context.instance()
        self.socket_setup = socket_setup
        self.send_timeout = send_timeout
        self.counters: Counter[str] = Counter()
        self.sock: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.hwm)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        # Never block forever: with no broker (or a refused handshake) a DEALER has nowhere to queue.
        s.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
        if self.socket_setup is not None:
            self.socket_setup(s)
        s.connect(self.endpoint)
        self.sock = s
        now = time.monotonic()
        self.last_heard = now
        self.last_sent = 0.0
        self._hello()

    def _hello(self) -> None:
        self.last_hello = time.monotonic()
        meta = {"role": self.role, **self.hello_meta}
        self._send_frames(b"", P.encode(P.make(P.Kind.HELLO, self.name, meta=meta)))
        self.counters["hellos"] += 1

    def reconnect(self, why: str) -> None:
        log.warning("%s: %s; reconnecting to %s", self.name, why, self.endpoint)
        self.counters["reconnects"] += 1
        self._connect()

    def _send_frames(self, route: bytes, frames: list[Any]) -> bool:
        """False if the message could not leave within ``send_timeout`` (no broker to take it)."""
        assert self.sock is not None  # internal invariant, not peer input
        out = [route, *frames] if self.routed else frames
        try:
            self.sock.send_multipart(out, copy=False)
        except zmq.Again:
            self.counters["send_timeouts"] += 1
            log.warning("%s: the broker did not take a message within %.1f s; it was not sent", self.name,
                        self.send_timeout)
            return False
        self.last_sent = time.monotonic()
        self.counters["sent"] += 1
        return True

    def _beat(self) -> None:
        if time.monotonic() - self.last_sent > self.heartbeat_interval:
            self._send_frames(b"", P.encode(P.make(P.Kind.HEARTBEAT, self.name)))

    def _check_broker(self) -> None:
        """Called only when nothing is waiting to be read: a busy process is not a dead broker."""
        silent = time.monotonic() - self.last_heard
        if silent > self.heartbeat_interval * self.liveness:
            self.reconnect(f"no word from the broker for {silent:.1f} s")

    def _recv(self, timeout: float) -> tuple[bytes, P.Message] | None:
        """Next application message; handles heartbeats and re-registration."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._beat()
            assert self.sock is not None
            left = deadline - time.monotonic()
            wait = min(max(left, 0.0), self.heartbeat_interval / 2)
            if not self.sock.poll(wait * 1000, zmq.POLLIN):
                self._check_broker()
                if time.monotonic() >= deadline:
                    return None
                continue
            frames = self.sock.recv_multipart(copy=False)
            self.last_heard = time.monotonic()
            route = b""
            if self.routed:
                if not frames:
                    continue
                route, frames = P.split_route(frames)
            try:
                msg = P.decode(frames, self.limits)
            except P.ProtocolError as exc:
                self.counters["rejected"] += 1
                log.warning("%s: dropped an invalid message from the broker: %s", self.name, exc)
                continue
            if msg.kind == P.Kind.HEARTBEAT:
                continue
            if msg.kind == P.Kind.ERROR and msg.meta.get("code") == P.ErrorCode.NOT_REGISTERED:
                # Every message queued before the broker forgot us draws this error: one HELLO is enough.
                if time.monotonic() - self.last_hello > self.heartbeat_interval:
                    log.warning("%s: the broker does not know us (restarted, or we were silent); saying hello "
                                "again", self.name)
                    self.counters["re_registrations"] += 1
                    self._hello()
                continue
            self.counters["received"] += 1
            return route, msg

    def close(self) -> None:
        if self.sock is not None:
            self.sock.setsockopt(zmq.SNDTIMEO, 100)
            with contextlib.suppress(zmq.ZMQError):
                self._send_frames(b"", P.encode(P.make(P.Kind.GOODBYE, self.name)))
            self.sock.close(linger=100)
            self.sock = None


class ZmqNodeLink(_BrokerConnection):
    """A node's DEALER to the broker's node port."""

    def __init__(self, endpoint: str, name: str, **kwargs: Any) -> None:
        super().__init__(endpoint, name, "node", **kwargs)

    def send(self, msg: P.Message) -> bool:
        msg.sender = self.name
        return self._send_frames(b"", P.encode(msg))

    def recv(self, timeout: float) -> P.Message | None:
        got = self._recv(timeout)
        return None if got is None else got[1]


class ZmqGeneratorLink(_BrokerConnection):
    """The generator's DEALER to the broker's generator port."""

    routed = True

    def __init__(self, endpoint: str, name: str = "generator", **kwargs: Any) -> None:
        super().__init__(endpoint, name, "generator", **kwargs)

    def send(self, to: str, msg: P.Message) -> bool:
        msg.sender = self.name
        return self._send_frames(to.encode(), P.encode(msg))

    def broadcast(self, msg: P.Message) -> bool:
        msg.sender = self.name
        return self._send_frames(b"", P.encode(msg))

    def recv(self, timeout: float) -> tuple[str, P.Message] | None:
        got = self._recv(timeout)
        if got is None:
            return None
        route, msg = got
        return route.decode(errors="replace"), msg
