"""The broker's handlers for what peers send: registration, expiry, validation and routing of each message.

A mixin of :class:`broker.broker.Broker`, which owns the sockets, the sending
helpers, heartbeats and the poll loop; this module holds the per-message policy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from broker.records import BrokerConfig, PeerRecord
from dgan import protocol as P
from dgan.msglog import Direction

log = logging.getLogger("dgan.broker")

BROKER_NAME = "broker"
_HELLO, _HEARTBEAT, _GOODBYE = P.Kind.HELLO, P.Kind.HEARTBEAT, P.Kind.GOODBYE  # module constants: no enum lookups
_FROM_NODES = frozenset((P.Kind.MASKS, P.Kind.FAKE_REQUEST, P.Kind.FEEDBACK))  # what the broker routes on
_TO_NODES = frozenset((P.Kind.WELCOME, P.Kind.FAKES, P.Kind.ERROR, P.Kind.GOODBYE, P.Kind.STATUS))


class PeerHandlers:
    """Needs the attributes and sending helpers that :class:`~broker.broker.Broker` provides."""

    config: BrokerConfig
    nodes: dict[bytes, PeerRecord]
    by_name: dict[str, bytes]
    generator: PeerRecord | None
    allowlist: dict[bytes, Any] | None
    recorder: Any
    counters: Any
    _pending: Any
    _expiry: float
    gen_sock: zmq.Socket

    # the sending helpers, defined by Broker
    def _record(self, direction: Direction, peer: str, frames: list[Any]) -> None: ...
    def _send_node(self, identity: bytes, frames: list[Any]) -> bool: ...
    def _send_generator(self, route: bytes, frames: list[Any]) -> bool: ...
    def _park_outbox(self) -> None: ...
    def _publish(self, frames: list[Any]) -> None: ...
    def _reply_error(self, identity: bytes, to_generator: bool, code: P.ErrorCode, reason: str,
                     reply_to: int = 0, peer: str = "?", **extra: Any) -> None: ...

    # ------------------------------------------------------------ peers

    def _register_node(self, identity: bytes, msg: P.Message, frames: list[Any]) -> None:
        now = time.time()
        name = msg.sender
        old_identity = self.by_name.get(name)
        if old_identity is not None and old_identity != identity:
            # The same name from a new connection: a restarted node. Newest wins.
            log.info("node %s reconnected from a new connection; replacing the old one", name)
            self._expire_node(old_identity, "replaced by a new connection")
        rec = self.nodes.get(identity)
        if rec is not None and rec.name != name:
            self._reply_error(identity, False, P.ErrorCode.NAME_IN_USE,
                              f"this connection is registered as {rec.name!r}; it cannot also be {name!r}",
                              msg.msg_id, rec.name)
            return
        if rec is None and len(self.nodes) >= self.config.max_nodes:
            self._reply_error(identity, False, P.ErrorCode.BACKPRESSURE,
                              f"this broker serves at most {self.config.max_nodes} nodes; try again later",
                              msg.msg_id, name)
            return
        if rec is None:
            rec = PeerRecord(identity, name, "node", now + self._expiry)
            self.nodes[identity] = rec
            self.by_name[name] = identity
            log.info("node %s joined", name)
        rec.hello = [bytes(P.frame_view(f)) for f in frames]
        self.counters["node_joins"] += 1
        if not self._send_generator(name.encode(), frames):
            # No generator yet: it gets this HELLO when it registers.
            log.info("node %s waits for a generator", name)

    def _expire_node(self, identity: bytes, reason: str) -> None:
        rec = self.nodes.pop(identity, None)
        if rec is None:
            return
        if self.by_name.get(rec.name) == identity:
            del self.by_name[rec.name]
        self.counters["node_leaves"] += 1
        log.info("node %s left (%s)", rec.name, reason)
        note = P.encode(P.make(P.Kind.NODE_LEFT, BROKER_NAME, meta={"node": rec.name, "reason": reason}))
        self._record(Direction.TO_GENERATOR, rec.name, note)
        self._send_generator(rec.name.encode(), note)

    def _register_generator(self, identity: bytes, msg: P.Message, key: str | None = None) -> None:
        now = time.time()
        current = self.generator
        # One generator at a time: every node's masks and gradients go to it. Only the same (pinned) key may take
        # over a registration not yet expired, and only once the old connection has gone quiet (a restart).
        taken = current is not None and current.identity != identity and current.expires_at >= now
        # A restart is silent on its old connection; two live processes sharing a key would swap forever.
        restarted = current is not None and now - current.last_seen > self.config.heartbeat_interval
        if taken and (key is None or key != current.key or not restarted):
            self._reply_error(identity, True, P.ErrorCode.NAME_IN_USE,
                              f"generator {current.name!r} is registered and alive; a second generator is "
                              "refused until it leaves or expires", msg.msg_id)
            return
        if current is not None and current.identity != identity:
            log.warning("a new generator %s replaces %s", msg.sender, current.name)
            self._fail_pending("the generator was replaced before this message reached it; retry later")
        self.generator = PeerRecord(identity, msg.sender, "generator", now + self._expiry, key=key)
        log.info("generator %s registered; %d node(s) known", msg.sender, len(self.nodes))
        for rec in list(self.nodes.values()):  # tell it about every node already here
            if rec.hello:
                self._record(Direction.TO_GENERATOR, rec.name, rec.hello)
                self._send_generator(rec.name.encode(), rec.hello)

    def _drop_generator(self, reason: str) -> None:
        """Forget the generator; whatever waits for it goes back to its sender (also if it was dropped already)."""
        if self.generator is not None:
            log.warning("generator %s left (%s)", self.generator.name, reason)
            self.generator = None
            self.counters["generator_leaves"] += 1
        self._fail_pending(f"the generator left ({reason}) before this message reached it; retry later")

    def _fail_pending(self, reason: str) -> None:
        """Messages parked, or gathered in a burst, for a generator that is gone: each goes back to its sender as
        an ERROR. None of them may reach the next generator: they are addressed to this one."""
        self._park_outbox()
        while self._pending:
            self._return_to_sender(self._pending.popleft(), P.ErrorCode.NO_GENERATOR, reason)

    def _return_to_sender(self, frames: list[Any], code: P.ErrorCode, reason: str) -> None:
        """An ERROR, by the message's id, to the node that sent ``frames`` ([generator, route, *body])."""
        _, route, *body = frames
        name = bytes(route).decode(errors="replace")
        identity = self.by_name.get(name)
        if identity is None:
            return  # a broker notice (NODE_LEFT) about a node that is itself gone, or a node that left
        try:
            msg_id = P.peek_header(body).get("id", 0)
        except P.ProtocolError:
            msg_id = 0
        self._reply_error(identity, False, code, reason, msg_id if isinstance(msg_id, int) else 0, name)

    # ------------------------------------------------------------ handlers

    def _key_problem(self, frame: Any, role: str, sender: str | None) -> tuple[P.ErrorCode, str] | None:
        """With CURVE: the authenticated key must hold ``role`` and, for nodes, the sender's name."""
        if self.allowlist is None:
            return None
        user = frame.get("User-Id") if hasattr(frame, "get") else None
        who = self.allowlist.get(user.encode()) if user else None
        if who is None or who.role != role:
            return P.ErrorCode.FORBIDDEN, f"this key may not act as a {role}"
        if sender is not None and sender != who.name:
            return P.ErrorCode.SPOOFED_SENDER, f"this key belongs to {who.name!r}, not {sender!r}"
        return None

    def _on_node_message(self, frames: list[Any]) -> None:
        identity = bytes(frames[0])  # zmq.Frame, bytes and memoryview all give their bytes
        body = frames[1:]
        rec = self.nodes.get(identity)
        try:
            msg = P.decode(body, self.config.limits, arrays=self.config.build_arrays)  # routed, not read
        except P.ProtocolError as exc:
            self.counters["rejected_from_nodes"] += 1
            if rec is not None:
                rec.errors += 1
            self._reply_error(identity, False, exc.code, exc.reason, peer=rec.name if rec else identity.hex()[:12])
            return
        if self.recorder is not None:
            self._record(Direction.FROM_NODE, rec.name if rec else msg.sender, body)
        kind = msg.kind
        now = time.time()
        peer = rec.name if rec else identity.hex()[:12]
        if self.allowlist is not None:
            problem = self._key_problem(frames[-1], "node", msg.sender)
            if problem:
                self._reply_error(identity, False, problem[0], problem[1], msg.msg_id, peer)
                return
        if kind == _HELLO:
            if msg.meta.get("role") != "node":
                self._reply_error(identity, False, P.ErrorCode.FORBIDDEN,
                                  "the node port takes HELLO with role 'node' only", msg.msg_id, peer)
                return
            self._register_node(identity, msg, body)
            return
        if rec is None:
            self._reply_error(identity, False, P.ErrorCode.NOT_REGISTERED,
                              f"send HELLO before {kind.name}", msg.msg_id, peer)
            return
        rec.last_seen, rec.expires_at = now, now + self._expiry
        rec.msgs_in += 1
        rec.bytes_in += sum(map(len, body))  # as it came: packed masks count packed
        if msg.sender != rec.name:
            rec.errors += 1
            self._reply_error(identity, False, P.ErrorCode.SPOOFED_SENDER,
                              f"this connection is registered as {rec.name!r}, not {msg.sender!r}", msg.msg_id, peer)
            return
        if kind == _HEARTBEAT:
            return
        if kind == _GOODBYE:
            self._send_generator(rec.name.encode(), body)
            self.nodes.pop(identity, None)
            self.by_name.pop(rec.name, None)
            self.counters["node_leaves"] += 1
            log.info("node %s said goodbye", rec.name)
            return
        if kind not in _FROM_NODES:
            rec.errors += 1
            self._reply_error(identity, False, P.ErrorCode.FORBIDDEN,
                              f"nodes may not send {kind.name}", msg.msg_id, peer)
            return
        if not self._send_generator(rec.route, body):
            self._reply_error(identity, False, P.ErrorCode.NO_GENERATOR,
                              "no generator is connected; retry later", msg.msg_id, peer)
            return
        self.counters["routed_to_generator"] += 1

    def _on_generator_message(self, frames: list[Any]) -> None:
        identity = bytes(frames[0])
        gen = self.generator
        is_current = gen is not None and gen.identity == identity
        if len(frames) < 2:
            self._reply_error(identity, True, P.ErrorCode.BAD_FRAMES, "missing routing frame")
            return
        route = bytes(frames[1])
        body = frames[2:]
        try:
            msg = P.decode(body, self.config.limits, arrays=self.config.build_arrays)  # routed, not read
        except P.ProtocolError as exc:
            self.counters["rejected_from_generator"] += 1
            self._reply_error(identity, True, exc.code, exc.reason, peer="generator")
            return
        now = time.time()
        kind = msg.kind
        if self.recorder is not None:
            self._record(Direction.FROM_GENERATOR, route.decode(errors="replace") or "*", body)
        if self.allowlist is not None:
            problem = self._key_problem(frames[-1], "generator", None)
            if problem:
                self._reply_error(identity, True, problem[0], problem[1], msg.msg_id)
                return
        if kind == _HELLO:
            if msg.meta.get("role") != "generator":
                self._reply_error(identity, True, P.ErrorCode.FORBIDDEN,
                                  "the generator port takes HELLO with role 'generator' only", msg.msg_id)
                return
            user = frames[-1].get("User-Id") if self.allowlist is not None and hasattr(frames[-1], "get") else None
            self._register_generator(identity, msg, user or None)
            return
        if not is_current or gen is None:
            self._reply_error(identity, True, P.ErrorCode.NOT_REGISTERED,
                              f"send HELLO before {kind.name}", msg.msg_id)
            return
        gen.last_seen, gen.expires_at = now, now + self._expiry
        gen.msgs_in += 1
        if kind == _HEARTBEAT:
            return
        if not route:
            if kind in (P.Kind.STATUS, P.Kind.GOODBYE):
                self._publish(body)
                if kind == P.Kind.GOODBYE and msg.meta.get("leaving") is True:  # its link closes, not a timeout
                    self._drop_generator("said goodbye")
            else:
                self._reply_error(identity, True, P.ErrorCode.BAD_FRAMES,
                                  f"{kind.name} needs a node name in the routing frame", msg.msg_id)
            return
        if kind not in _TO_NODES:
            self._reply_error(identity, True, P.ErrorCode.FORBIDDEN,
                              f"the generator may not send {kind.name} to a node", msg.msg_id)
            return
        name = route.decode(errors="replace")
        node_identity = self.by_name.get(name)
        if node_identity is None:
            self._reply_error(identity, True, P.ErrorCode.UNREACHABLE,
                              f"node {name!r} is not connected", msg.msg_id, node=name)
            return
        if not self._send_node(node_identity, body):
            self._reply_error(identity, True, P.ErrorCode.BACKPRESSURE,
                              f"node {name!r} is not accepting messages (its queue is full or it is gone)",
                              msg.msg_id, node=name)
            return
        self.counters["routed_to_nodes"] += 1

