"""ZeroMQ links to the broker, for nodes and for the generator.

Liveness is kept apart from compute: each link owns an I/O thread that alone
touches the DEALER socket. It says HELLO on connect, sends heartbeats when the
link has been quiet, watches the broker's heartbeats, and re-registers when the
broker has been silent for ``liveness`` intervals (or says NOT_REGISTERED, as a
restarted broker does). A D step, a synthesis or a checkpoint write in the
caller's thread therefore never makes this peer look dead; torch releases the
GIL in its kernels, so the thread runs while they do.

The caller hands outgoing messages to the thread and waits (bounded) for the
verdict; incoming messages wait in a bounded inbox. While the inbox is full the
thread stops reading, so ZeroMQ's high-water marks push back on the sender.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from dgan import protocol as P
from dgan.transport.base import LinkClosed

log = logging.getLogger("dgan.transport")

_link_ids = itertools.count()
__all__ = ["LinkClosed", "ZmqGeneratorLink", "ZmqNodeLink"]


@dataclass
class _Outgoing:
    """One message handed to the I/O thread. ``taken`` and ``cancelled`` decide, under ``lock``, who owns it:
    a caller that gave up never sees it leave later (so "not sent" is safe to retry)."""

    route: bytes
    frames: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: bool = False
    cancelled: bool = False
    sent: bool = False


class _BrokerConnection:
    """A DEALER socket to the broker, owned by its own I/O thread, with registration and liveness."""

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
        self.sock: zmq.Socket | None = None  # touched only by the I/O thread
        self._inbox: queue.Queue[tuple[bytes, P.Message]] = queue.Queue(maxsize=max(1, hwm))
        self._outbox: queue.Queue[_Outgoing] = queue.Queue()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        wake = f"inproc://dgan-link-{next(_link_ids)}-{id(self):x}"
        self._wake_rx = self.ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake)
        self._wake_tx = self.ctx.socket(zmq.PAIR)
        self._wake_tx.connect(wake)
        self._wake_lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._io_main, name=f"dgan-link-{name}", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)

    # ------------------------------------------------------------ caller's side

    def _submit(self, route: bytes, frames: list[Any]) -> bool:
        """Hand a message to the I/O thread; False if it could not leave within ``send_timeout``."""
        if self._stop.is_set() or not self._thread.is_alive():
            self.counters["sent_after_close"] += 1  # nothing can leave: the contract's False, not an exception
            return False
        item = _Outgoing(route, frames)
        self._outbox.put(item)
        self._wake()
        if not item.done.wait(self.send_timeout + 1.0):
            with item.lock:
                if not item.taken:
                    item.cancelled = True
                    self.counters["send_timeouts"] += 1
                    return False
            while not item.done.wait(1.0):  # the thread holds it: its SNDTIMEO ends the wait
                if not self._thread.is_alive():
                    break
        return item.sent

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(zmq.ZMQError):
            self._wake_tx.send(b"", zmq.NOBLOCK)

    def _recv(self, timeout: float) -> tuple[bytes, P.Message] | None:
        """Next application message, or None after ``timeout`` seconds."""
        try:
            was_full = self._inbox.full()
            got = self._inbox.get(timeout=max(0.0, timeout)) if timeout > 0 else self._inbox.get_nowait()
            if was_full:
                self._wake()  # the thread stopped reading while the inbox was full: room again
            return got
        except queue.Empty:
            if self._failure is not None:
                raise LinkClosed(f"{self.name}: the link's I/O thread failed") from self._failure
            return None

    def close(self) -> None:
        """GOODBYE to the broker (best effort), then stop the I/O thread and close its sockets."""
        if not self._stop.is_set():
            self._stop.set()
            self._wake()
            self._thread.join(max(2.0, self.send_timeout + 1.0))
        with self._wake_lock:
            self._wake_tx.close(linger=0)

    # ------------------------------------------------------------ the I/O thread

    def _io_main(self) -> None:
        try:
            self._connect()
            self._ready.set()
            self._io_loop()
        except BaseException as exc:  # the caller sees it: recv raises LinkClosed, send returns False
            self._failure = exc
            log.exception("%s: the link's I/O thread failed", self.name)
        finally:
            self._ready.set()
            self._shutdown()

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        while not self._stop.is_set():
            self._flush_outbox()
            self._beat()
            assert self.sock is not None  # internal invariant, not peer input
            inbox_full = self._inbox.full()
            if not inbox_full:
                poller.register(self.sock, zmq.POLLIN)
            ready = dict(poller.poll(self.heartbeat_interval / 4 * 1000))
            if not inbox_full:
                poller.unregister(self.sock)
            if self._wake_rx in ready:
                with contextlib.suppress(zmq.Again):
                    while True:
                        self._wake_rx.recv(zmq.NOBLOCK)
            if inbox_full:
                # The caller is busy, not the broker dead: what waits unread proves the broker talks.
                if self.sock.poll(0, zmq.POLLIN):
                    self.last_heard = time.monotonic()
                else:
                    self._check_broker()
            elif self.sock in ready:
                self._read_some()
            else:
                self._check_broker()

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
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self._hello()

    def _hello(self) -> None:
        self.last_hello = time.monotonic()
        meta = {"role": self.role, **self.hello_meta}
        self._send_frames(b"", P.encode(P.make(P.Kind.HELLO, self.name, meta=meta)))
        self.counters["hellos"] += 1

    def _reconnect(self, why: str) -> None:
        log.warning("%s: %s; reconnecting to %s", self.name, why, self.endpoint)
        self.counters["reconnects"] += 1
        self._connect()

    def _flush_outbox(self) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            with item.lock:
                if item.cancelled:
                    continue
                item.taken = True
            try:
                item.sent = self._send_frames(item.route, item.frames)
            finally:
                item.done.set()

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
            self.counters["heartbeats"] += 1

    def _check_broker(self) -> None:
        silent = time.monotonic() - self.last_heard
        if silent > self.heartbeat_interval * self.liveness:
            self._reconnect(f"no word from the broker for {silent:.1f} s")

    def _read_some(self, most: int = 64) -> None:
        """Read what is waiting (at most ``most``) into the inbox; heartbeats and re-registration end here."""
        assert self.sock is not None
        for _ in range(most):
            if self._inbox.full():
                return
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
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
                self.counters["refused_unregistered"] += 1
                if msg.reply_to:  # the caller learns which message was refused (the generator releases its fakes)
                    self._inbox.put_nowait((route, msg))
                continue
            self.counters["received"] += 1
            msg.received_at = time.monotonic()  # before the inbox: time spent queued there is the receiver's
            self._inbox.put_nowait((route, msg))

    def _shutdown(self) -> None:
        try:
            if self.sock is not None:
                self._flush_outbox()
                self.sock.setsockopt(zmq.SNDTIMEO, 100)
                # "leaving": the peer is gone (a generator's end-of-run GOODBYE comes before its synthesis)
                self._send_frames(b"", P.encode(P.make(P.Kind.GOODBYE, self.name, meta={"leaving": True})))
        except Exception:  # a failing socket must not keep waiting callers from being told
            log.debug("%s: could not say goodbye", self.name, exc_info=True)
        finally:
            if self.sock is not None:
                with contextlib.suppress(Exception):
                    self.sock.close(linger=100)
                self.sock = None
            with contextlib.suppress(Exception):
                self._wake_rx.close(linger=0)
            while True:  # a caller still waiting on a send learns it did not leave
                try:
                    self._outbox.get_nowait().done.set()
                except queue.Empty:
                    break


class ZmqNodeLink(_BrokerConnection):
    """A node's DEALER to the broker's node port."""

    def __init__(self, endpoint: str, name: str, **kwargs: Any) -> None:
        super().__init__(endpoint, name, "node", **kwargs)

    def send(self, msg: P.Message) -> bool:
        msg.sender = self.name
        return self._submit(b"", P.encode(msg))

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
        return self._submit(to.encode(), P.encode(msg))

    def broadcast(self, msg: P.Message) -> bool:
        msg.sender = self.name
        return self._submit(b"", P.encode(msg))

    def recv(self, timeout: float) -> tuple[str, P.Message] | None:
        got = self._recv(timeout)
        if got is None:
            return None
        route, msg = got
        return route.decode(errors="replace"), msg
