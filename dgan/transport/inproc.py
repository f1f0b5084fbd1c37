"""An in-process transport: the same messages, through queues.

Messages are encoded and decoded on the way (``wire=True``, the default), so
everything that runs over ZeroMQ runs here with the same validation, only
without sockets and processes.
"""

from __future__ import annotations

import queue
import threading
import time

from dgan import protocol as P


def _through_wire(msg: P.Message, wire: bool) -> P.Message:
    if wire:
        msg = P.decode([bytes(P.frame_view(f)) for f in P.encode(msg)])
    msg.received_at = time.monotonic()  # as the ZeroMQ link stamps it on arrival
    return msg


class InProcessHub:
    """Plays the broker's part between one generator and named nodes."""

    def __init__(self, wire: bool = True) -> None:
        self.wire = wire
        self._to_generator: queue.Queue[tuple[str, P.Message]] = queue.Queue()
        self._to_node: dict[str, queue.Queue[P.Message]] = {}
        self._lock = threading.Lock()
        self.broadcasts: list[P.Message] = []

    def node_link(self, name: str) -> InProcessNodeLink:
        with self._lock:
            self._to_node[name] = queue.Queue()
        return InProcessNodeLink(self, name)

    def generator_link(self) -> InProcessGeneratorLink:
        return InProcessGeneratorLink(self)

    def leave(self, name: str, reason: str) -> None:
        """A node vanished: tell the generator as the broker would."""
        with self._lock:
            self._to_node.pop(name, None)
        note = P.make(P.Kind.NODE_LEFT, "broker", meta={"node": name, "reason": reason})
        self._to_generator.put((name, note))


class InProcessNodeLink:
    def __init__(self, hub: InProcessHub, name: str) -> None:
        self.hub = hub
        self.name = name

    def send(self, msg: P.Message) -> bool:
        msg.sender = self.name
        self.hub._to_generator.put((self.name, _through_wire(msg, self.hub.wire)))
        return True

    def recv(self, timeout: float) -> P.Message | None:
        q = self.hub._to_node.get(self.name)
        if q is None:
            return None
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub.leave(self.name, "closed")


class InProcessGeneratorLink:
    def __init__(self, hub: InProcessHub) -> None:
        self.hub = hub

    def send(self, to: str, msg: P.Message) -> bool:
        q = self.hub._to_node.get(to)
        if q is None:
            err = P.error("broker", P.ErrorCode.UNREACHABLE, f"node {to!r} is not connected",
                          reply_to=msg.msg_id, node=to)
            self.hub._to_generator.put(("", err))
            return True  # it left this process; the hub answered as the broker would
        q.put(_through_wire(msg, self.hub.wire))
        return True

    def broadcast(self, msg: P.Message) -> bool:
        # As over ZeroMQ, broadcasts reach monitors, not nodes: keep them for inspection.
        self.hub.broadcasts.append(_through_wire(msg, self.hub.wire))
        return True

    def recv(self, timeout: float) -> tuple[str, P.Message] | None:
        try:
            return self.hub._to_generator.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass
