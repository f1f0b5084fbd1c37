"""The dgan broker: routes messages between one generator and many nodes.

Sockets (defaults in :class:`BrokerConfig`):

* ``node`` ROUTER, port 5555: discriminator nodes connect DEALER sockets.
* ``generator`` ROUTER, port 5556: the generator connects a DEALER socket.
  Every message between broker and generator carries one routing frame in
  front: the node's registered name (or ``b""`` for the broker itself / for
  broadcasts).
* ``pub`` XPUB, port 5557: status broadcasts, to nodes and read-only monitors.

The broker keeps a tiny record per peer (Majordomo style) with an expiry time,
validates everything it receives, answers bad input with an ERROR, and never
drops a message silently: a message it cannot deliver goes back to its sender
as an ERROR.  Node -> generator traffic is flow-controlled: while the
generator's pipe is full the broker stops reading from nodes, so back-pressure
reaches the senders instead of turning into loss.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from typing import Any

import zmq

from broker.handlers import BROKER_NAME, PeerHandlers
from broker.records import BrokerConfig, PeerRecord, RecordingFailed
from dgan import protocol as P
from dgan.msglog import Direction, MessageLogWriter
from dgan.transport.multipart import recv_frames, send_frames

log = logging.getLogger("dgan.broker")

_POLLIN, _POLLOUT, _NOBLOCK = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)  # plain ints: enum ops cost


def _pyzmq_send(sock: zmq.Socket, frames: list[Any], flags: int = 0) -> None:
    sock.send_multipart(frames, flags, copy=False)


def _pyzmq_recv(sock: zmq.Socket, flags: int = 0) -> list[Any]:
    return sock.recv_multipart(flags, copy=False)


class Broker(PeerHandlers):
    """Single-threaded router; ``serve()`` runs until ``stop()`` or a signal."""

    def __init__(self, config: BrokerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.ctx = context or zmq.Context.instance()
        self.nodes: dict[bytes, PeerRecord] = {}  # by ZeroMQ identity
        self.by_name: dict[str, bytes] = {}
        self.generator: PeerRecord | None = None
        self.counters: Counter[str] = Counter()
        self.errors_by_code: Counter[str] = Counter()
        self._pending: collections.deque[list[Any]] = collections.deque()  # to the generator, HWM full
        self._outbox: collections.deque[list[Any]] = collections.deque()  # to the generator, this drain
        self._outbox_bytes = 0
        self._stop = threading.Event()
        self._expiry = config.heartbeat_interval * config.liveness
        self.recorder: MessageLogWriter | None = None
        self.started = threading.Event()
        self._stats_at: tuple[float, int, int] | None = None  # (time, messages routed, bytes) at the last beat
        self._send_frames, self._recv_frames = (_pyzmq_send, _pyzmq_recv) if config.pyzmq_multipart else \
            (send_frames, recv_frames)
        self._bind()

    # ------------------------------------------------------------ lifecycle

    def _socket(self, kind: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.config.hwm)
        s.setsockopt(zmq.RCVHWM, self.config.hwm)
        s.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes)
        return s

    def _bind(self) -> None:
        cfg = self.config
        self.allowlist: dict[bytes, Any] | None = None
        self.auth: Any = None
        if (cfg.secret_key is None) != (cfg.authorized_keys is None):
            raise ValueError("CURVE needs both --secret-key and --authorized-keys")
        if cfg.secret_key is not None and cfg.authorized_keys is not None:
            from dgan.security import load_allowlist, start_authenticator

            self.allowlist = load_allowlist(cfg.authorized_keys)
            self.auth = start_authenticator(self.ctx, self.allowlist)
            log.info("CURVE on: %d authorized key(s)", len(self.allowlist))
        else:
            log.warning("no CURVE keys: traffic is neither encrypted nor authenticated; use this on one machine "
                        "or a trusted network only")
        self.node_sock = self._socket(zmq.ROUTER)
        self.node_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.node_sock.setsockopt(zmq.SNDTIMEO, 0)
        self.gen_sock = self._socket(zmq.ROUTER)
        self.gen_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.gen_sock.setsockopt(zmq.SNDTIMEO, 0)
        self.pub_sock = self._socket(zmq.XPUB)
        self.pub_sock.setsockopt(zmq.SNDTIMEO, 0)
        for sock, ep in ((self.node_sock, cfg.node_endpoint), (self.gen_sock, cfg.generator_endpoint),
                         (self.pub_sock, cfg.pub_endpoint)):
            if cfg.host != "127.0.0.1" and ":" in cfg.host:
                sock.setsockopt(zmq.IPV6, 1)
            if cfg.secret_key is not None:
                from dgan.security import server_setup

                server_setup(sock, cfg.secret_key)
            sock.bind(ep)
        if cfg.record is not None:
            self.recorder = MessageLogWriter(cfg.record, flush_interval=cfg.flush_interval,
                                             rotate_bytes=cfg.rotate_bytes, new_segment=True)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for sock in (self.node_sock, self.gen_sock, self.pub_sock):
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        if self.recorder is not None:
            self.recorder.close()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # ------------------------------------------------------------ sending

    def _record(self, direction: Direction, peer: str, frames: list[Any]) -> None:
        if self.recorder is not None:
            try:
                self.recorder.append(direction, peer, frames)
            except RuntimeError as exc:  # the writer thread failed (disk full, I/O error): see RecordingFailed
                raise RecordingFailed(str(exc)) from None

    def _send_node(self, identity: bytes, frames: list[Any]) -> bool:
        try:
            self._send_frames(self.node_sock, [identity, *frames])
        except zmq.Again:
            self._count_error(P.ErrorCode.BACKPRESSURE)
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._count_error(P.ErrorCode.UNREACHABLE)
            return False
        rec = self.nodes.get(identity)
        if rec is not None:
            rec.msgs_out += 1
        return True

    def _send_generator(self, route: bytes, frames: list[Any]) -> bool:
        """To the generator, in order; False if none is registered. The message leaves when the drain that
        routed it ends, or once a burst has gathered (:meth:`_flush_outbox`)."""
        gen = self.generator
        if gen is None:
            return False
        self._outbox.append([gen.identity, route, *frames])
        self._outbox_bytes += sum(map(len, frames))
        gen.msgs_out += 1
        return True

    def _flush_outbox(self) -> None:
        """Send what a drain routed to the generator, back to back. Sent one at a time, each message woke
        libzmq's I/O thread and went to TCP alone; a burst it writes in batches (docs/results/wan.md, session 27).
        What the generator's pipe cannot take waits in ``_pending``, in order, and node reads pause."""
        self._park_outbox()
        self._flush_pending()

    def _park_outbox(self) -> None:
        """The burst joins ``_pending``, behind what already waits there."""
        self._pending.extend(self._outbox)
        self._outbox.clear()
        self._outbox_bytes = 0

    def _flush_pending(self) -> None:
        """Send what waits for the generator, in order, until its pipe is full."""
        pending = self._pending
        while pending:
            try:
                self._send_frames(self.gen_sock, pending[0])
            except zmq.Again:
                return
            except Exception as exc:
                if isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH:
                    self._drop_generator("its connection is gone")  # every message waiting goes back as an ERROR
                    return
                # anything else is this message's problem (or a bug here): it alone goes back, the rest go on
                self.counters["internal_errors"] += 1
                log.exception("could not send a message to the generator")
                self._return_to_sender(pending.popleft(), P.ErrorCode.INTERNAL,
                                       f"the broker could not pass this message on ({type(exc).__name__}); "
                                       "it was not delivered")
                continue
            pending.popleft()

    def _reply_error(self, identity: bytes, to_generator: bool, code: P.ErrorCode, reason: str,
                     reply_to: int = 0, peer: str = "?", **extra: Any) -> None:
        self._count_error(code)
        log.warning("error to %s %s: %s %s", "generator" if to_generator else "node", peer, code.name, reason)
        frames = P.encode(P.error(BROKER_NAME, code, reason, reply_to=reply_to, **extra))
        if to_generator:
            self._record(Direction.TO_GENERATOR, peer, frames)
            try:
                self.gen_sock.send_multipart([identity, b"", *frames], copy=False)
            except zmq.ZMQError:
                self.counters["errors_undeliverable"] += 1
        else:
            self._record(Direction.TO_NODE, peer, frames)
            if not self._send_node(identity, frames):
                self.counters["errors_undeliverable"] += 1

    def _count_error(self, code: P.ErrorCode) -> None:
        self.counters["errors"] += 1
        self.errors_by_code[code.name] += 1

    def _publish(self, frames: list[Any]) -> None:
        self._record(Direction.PUBLISHED, "*", frames)
        try:
            self.pub_sock.send_multipart([b"status", *frames], copy=False)
            self.counters["published"] += 1
        except zmq.Again:  # a PUB drops for slow subscribers by design; count it
            self.counters["publish_dropped"] += 1

    # ------------------------------------------------------------ heartbeats

    def _heartbeat(self) -> None:
        now = time.time()
        for identity, rec in list(self.nodes.items()):
            if rec.expires_at < now:
                self._expire_node(identity, f"no message for {self._expiry:.1f} s")
        gen = self.generator
        if gen is not None and gen.expires_at < now:
            self._drop_generator(f"no message for {self._expiry:.1f} s")
        self._publish_stats()
        beat = P.encode(P.make(P.Kind.HEARTBEAT, BROKER_NAME))
        for identity in list(self.nodes):
            self._send_node(identity, beat)
        if self.generator is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.gen_sock.send_multipart([self.generator.identity, b"", *beat])

    def _publish_stats(self) -> None:
        """The broker's own line of the live view: message and byte rates since the last beat."""
        now = time.monotonic()
        routed = self.counters["routed_to_generator"] + self.counters["routed_to_nodes"]
        nbytes = sum(r.bytes_in for r in self.nodes.values())
        last = self._stats_at
        if last is not None:
            dt = max(1e-9, now - last[0])
            stats = {"msgs_per_s": (routed - last[1]) / dt, "mb_per_s": max(0, nbytes - last[2]) / dt / 1e6,
                     "errors": self.counters["errors"], "nodes": len(self.nodes),
                     "generator": self.generator.name if self.generator else None}
            self._publish(P.encode(P.make(P.Kind.STATUS, BROKER_NAME, meta={"broker": stats})))
        self._stats_at = (now, routed, nbytes)

    def _extend_leases(self, seconds: float) -> None:
        """While the broker was not reading from nodes, do not count it against them."""
        for rec in self.nodes.values():
            rec.expires_at += seconds

    # ------------------------------------------------------------ loop

    def serve(self) -> None:
        cfg = self.config
        poller = zmq.Poller()
        poller.register(self.gen_sock, _POLLIN)
        poller.register(self.pub_sock, _POLLIN)
        node_polled = False
        gen_flags = _POLLIN
        next_beat = time.monotonic() + cfg.heartbeat_interval
        paused_at: float | None = None
        self.started.set()
        log.info("broker serving nodes on %s, generator on %s, broadcasts on %s",
                 cfg.node_endpoint, cfg.generator_endpoint, cfg.pub_endpoint)
        try:
            while not self._stop.is_set():
                # Back-pressure: read from nodes only while the generator can take more.
                want_nodes = not self._pending
                if want_nodes != node_polled:
                    if want_nodes:
                        poller.register(self.node_sock, _POLLIN)
                        if paused_at is not None:
                            self._extend_leases(time.monotonic() - paused_at)
                            paused_at = None
                    else:
                        poller.unregister(self.node_sock)
                        paused_at = time.monotonic()
                    node_polled = want_nodes
                flags = (_POLLIN | _POLLOUT) if self._pending else _POLLIN
                if flags != gen_flags:
                    poller.modify(self.gen_sock, flags)
                    gen_flags = flags
                timeout = max(0.0, next_beat - time.monotonic())
                events = dict(poller.poll(min(timeout, 0.25) * 1000))
                if self.gen_sock in events:
                    if events[self.gen_sock] & _POLLOUT:
                        self._flush_pending()
                    if events[self.gen_sock] & _POLLIN:
                        self._drain(self.gen_sock, self._on_generator_message)
                if self.node_sock in events:
                    self._drain(self.node_sock, self._on_node_message)
                if self.pub_sock in events:
                    self._drain(self.pub_sock, self._on_subscription)
                if time.monotonic() >= next_beat:
                    if paused_at is not None:
                        self._extend_leases(time.monotonic() - paused_at)
                        paused_at = time.monotonic()
                    self._heartbeat()
                    next_beat = time.monotonic() + cfg.heartbeat_interval
                    if self._outbox:  # NODE_LEFT notes
                        self._flush_outbox()
        except RecordingFailed as exc:
            log.critical("the message log failed (%s): the broker stops, since a run that asked to be recorded must "
                         "not go on unrecorded. Free the disk and start the broker again with the same --record: "
                         "peers re-register by themselves and the log goes on in a new segment.", exc)
            raise
        finally:
            log.info("broker stopping: %s", dict(self.counters))
            self.close()

    def _drain(self, sock: zmq.Socket, handler: Any) -> None:
        """Handle up to ``drain_batch`` waiting messages; what they route to the generator leaves at the end."""
        try:
            self._handle_waiting(sock, handler)
        except BaseException:  # RecordingFailed or a stop: send what was routed, but never hide why it stopped
            with contextlib.suppress(Exception):
                self._flush_outbox()
            raise
        if self._outbox:
            self._flush_outbox()

    def _handle_waiting(self, sock: zmq.Socket, handler: Any) -> None:
        cfg = self.config
        for _ in range(cfg.drain_batch):
            try:
                frames = self._recv_frames(sock, _NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(frames)
            except RecordingFailed:
                raise
            except Exception as exc:  # one bad message must never stop the broker, nor go unanswered
                self.counters["internal_errors"] += 1
                log.exception("internal error while handling a message")
                self._reply_internal(sock, frames, exc)
            if len(self._outbox) >= cfg.send_burst or self._outbox_bytes >= cfg.send_burst_bytes:
                self._flush_outbox()
            if sock is self.node_sock and self._pending:
                return

    def _reply_internal(self, sock: zmq.Socket, frames: list[Any], exc: Exception) -> None:
        """An ERROR for a message whose handling failed inside the broker (a bug here, not the peer's fault)."""
        if sock is self.pub_sock or not frames:
            return
        identity = bytes(P.frame_view(frames[0]))
        with contextlib.suppress(Exception):
            self._reply_error(identity, sock is self.gen_sock, P.ErrorCode.INTERNAL,
                              f"the broker failed on this message ({type(exc).__name__}); it was not delivered")

    def _on_subscription(self, frames: list[Any]) -> None:
        data = bytes(frames[0].buffer) if frames else b""
        if data[:1] == b"\x01":
            self.counters["subscribers"] += 1
            log.info("a subscriber joined the broadcast channel")
        elif data[:1] == b"\x00":
            self.counters["subscribers"] -= 1

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "errors_by_code": dict(self.errors_by_code),
            "nodes": {r.name: {"msgs_in": r.msgs_in, "msgs_out": r.msgs_out, "bytes_in": r.bytes_in,
                               "errors": r.errors, "last_seen": r.last_seen} for r in self.nodes.values()},
            "generator": self.generator.name if self.generator else None,
        }
