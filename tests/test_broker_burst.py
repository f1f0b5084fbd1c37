"""The broker sends what one drain routes to the generator as a burst: in order, bounded, and nothing lost when
the generator's pipe fills or its connection goes. In-process, with the broker's socket calls replaced."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from broker import Broker, BrokerConfig
from broker.records import PeerRecord
from dgan import protocol as P
from dgan.commands import free_ports

GEN = b"gen-identity"


class Wire:
    """What the broker read and sent, in order: ("recv", id) and ("send", socket, id, kind)."""

    def __init__(self, broker: Broker, inbound: list[list[Any]]) -> None:
        self.broker, self.inbound, self.events = broker, list(inbound), []
        self.refuse_after: int | None = None  # the generator's pipe takes this many, then says Again
        self.gone = False  # the generator's connection is gone: EHOSTUNREACH
        self.broken: set[int] = set()  # ids whose send to the generator fails for a reason of their own
        broker._recv_frames = self.recv
        broker._send_frames = self.send

    def recv(self, sock: zmq.Socket, flags: int = 0) -> list[Any]:
        if sock is not self.broker.node_sock or not self.inbound:
            raise zmq.Again()
        frames = self.inbound.pop(0)
        self.events.append(("recv", P.peek_header(frames[1:])["id"]))
        return frames

    def send(self, sock: zmq.Socket, frames: list[Any], flags: int = 0) -> None:
        to_generator = sock is self.broker.gen_sock
        body = frames[2:] if to_generator else frames[1:]
        header = P.peek_header(body)
        if to_generator:
            if self.gone:
                raise zmq.ZMQError(errno.EHOSTUNREACH)
            if header["id"] in self.broken:
                raise zmq.ZMQError(errno.EINVAL)
            sent = sum(1 for e in self.events if e[0] == "send" and e[1] == "generator")
            if self.refuse_after is not None and sent >= self.refuse_after:
                raise zmq.Again()
        self.events.append(("send", "generator" if to_generator else "node", header.get("reply_to") or header["id"],
                            header["kind"]))

    def sent_to_generator(self) -> list[int]:
        return [e[2] for e in self.events if e[0] == "send" and e[1] == "generator"]


@pytest.fixture
def broker() -> Iterator[Broker]:
    a, b, c = free_ports(3)
    brk = Broker(BrokerConfig(node_port=a, generator_port=b, pub_port=c, send_burst=4),
                 context=zmq.Context())
    brk.generator = PeerRecord(GEN, "generator", "generator", time.time() + 60)
    for name in ("n1", "n2"):
        brk.nodes[name.encode()] = PeerRecord(name.encode(), name, "node", time.time() + 60)
        brk.by_name[name] = name.encode()
    try:
        yield brk
    finally:
        brk.close()
        brk.ctx.term()


def requests(count: int, width: int = 4) -> tuple[list[list[Any]], list[int]]:
    """``count`` FAKE_REQUESTs of ``width`` KiB-ish masks, alternating between the two nodes, as the node socket
    delivers them."""
    inbound, ids = [], []
    for i in range(count):
        name = ("n1", "n2")[i % 2]
        msg = P.make(P.Kind.FAKE_REQUEST, name, tensors={"masks": np.zeros((1, 4, width), np.uint8) + 2})
        inbound.append([name.encode(), *[bytes(P.frame_view(f)) for f in P.encode(msg)]])
        ids.append(msg.msg_id)
    return inbound, ids


def test_a_drain_sends_its_routed_messages_in_bursts_in_the_order_they_came(broker: Broker) -> None:
    inbound, ids = requests(10)
    wire = Wire(broker, inbound)
    broker._drain(broker.node_sock, broker._on_node_message)
    assert wire.sent_to_generator() == ids  # every one, in order
    steps = [e[0] for e in wire.events]  # burst of 4 (send_burst), then the rest when the drain ends
    assert steps == ["recv"] * 4 + ["send"] * 4 + ["recv"] * 4 + ["send"] * 4 + ["recv"] * 2 + ["send"] * 2
    assert not broker._outbox and not broker._pending
    assert broker.counters["routed_to_generator"] == 10


def test_a_full_generator_pipe_parks_the_rest_of_a_burst_in_order_and_pauses_node_reads(broker: Broker) -> None:
    inbound, ids = requests(10)
    wire = Wire(broker, inbound)
    wire.refuse_after = 2
    broker._drain(broker.node_sock, broker._on_node_message)
    assert wire.sent_to_generator() == ids[:2]
    assert [P.peek_header(m[2:])["id"] for m in broker._pending] == ids[2:4]  # parked, in order
    assert len(wire.inbound) == 6  # node reads stopped at the first full burst: back-pressure reaches the nodes
    wire.refuse_after = None
    broker._flush_pending()
    broker._drain(broker.node_sock, broker._on_node_message)
    assert wire.sent_to_generator() == ids  # nothing accepted was lost, and the order held
    assert not broker._pending and not broker._outbox


def test_a_generator_connection_gone_mid_burst_sends_every_unsent_message_back_as_an_error(broker: Broker) -> None:
    inbound, ids = requests(3)
    wire = Wire(broker, inbound)
    wire.gone = True
    broker._drain(broker.node_sock, broker._on_node_message)
    assert broker.generator is None
    errors = [(e[2], e[3]) for e in wire.events if e[0] == "send" and e[1] == "node"]
    assert errors == [(i, P.Kind.ERROR) for i in ids]  # each sender learns, by the id of its message
    assert broker.errors_by_code["NO_GENERATOR"] == 3
    assert not broker._pending and not broker._outbox


def test_large_messages_are_not_held_back_for_a_burst(broker: Broker) -> None:
    inbound, ids = requests(4, width=150 * 1024)  # 600 KiB each: two pass the 1 MiB burst bound
    wire = Wire(broker, inbound)
    broker._drain(broker.node_sock, broker._on_node_message)
    assert [e[0] for e in wire.events] == ["recv", "recv", "send", "send"] * 2
    assert wire.sent_to_generator() == ids


def test_a_message_that_fails_to_send_for_its_own_reason_goes_back_alone_and_the_rest_arrive(broker: Broker) -> None:
    inbound, ids = requests(6)
    wire = Wire(broker, inbound)
    wire.broken = {ids[2]}
    broker._drain(broker.node_sock, broker._on_node_message)  # does not raise: the broker goes on
    assert wire.sent_to_generator() == ids[:2] + ids[3:]
    assert [(e[2], e[3]) for e in wire.events if e[0] == "send" and e[1] == "node"] == [(ids[2], P.Kind.ERROR)]
    assert broker.errors_by_code["INTERNAL"] == 1 and broker.generator is not None
    assert not broker._pending and not broker._outbox


def _expire_everyone(broker: Broker) -> None:
    assert broker.generator is not None
    past = time.time() - 1
    broker.generator.expires_at = past
    for rec in broker.nodes.values():
        rec.expires_at = past


@pytest.mark.parametrize("generator_state", ["gone", "hung"])
def test_notes_for_a_generator_that_expires_in_the_same_beat_never_wait_for_the_next_one(
        broker: Broker, generator_state: str) -> None:
    """Nodes and generator fall silent together: the NODE_LEFT notes gathered for the old generator must not stay
    parked (that pauses every node read) nor reach, or drop, the generator that registers next."""
    wire = Wire(broker, [])
    wire.gone = generator_state == "gone"
    wire.refuse_after = 0 if generator_state == "hung" else None
    _expire_everyone(broker)
    broker._heartbeat()
    if broker._outbox:
        broker._flush_outbox()  # what serve() does after a beat
    assert broker.generator is None
    assert not broker._pending and not broker._outbox  # node reads go on
    wire.gone, wire.refuse_after = False, None
    broker._register_generator(b"new-gen", P.make(P.Kind.HELLO, "generator2", meta={"role": "generator"}))
    broker._flush_pending()
    assert broker.generator is not None and broker.generator.identity == b"new-gen"
    assert wire.sent_to_generator() == []  # no NODE_LEFT for nodes the new generator never knew


def test_hellos_replayed_to_a_generator_that_leaves_in_the_same_drain_do_not_wait_for_the_next(
        broker: Broker) -> None:
    broker.generator = None
    for rec in broker.nodes.values():
        rec.hello = [bytes(P.frame_view(f)) for f in P.encode(P.make(P.Kind.HELLO, rec.name, meta={"role": "node"}))]
    inbound = [[GEN, b"", *[bytes(P.frame_view(f)) for f in P.encode(P.make(P.Kind.HELLO, "generator",
                                                                             meta={"role": "generator"}))]],
               [GEN, b"", *[bytes(P.frame_view(f)) for f in P.encode(P.make(P.Kind.GOODBYE, "generator",
                                                                             meta={"leaving": True}))]]]

    def recv(sock: zmq.Socket, flags: int = 0) -> list[Any]:
        if sock is not broker.gen_sock or not inbound:
            raise zmq.Again()
        return inbound.pop(0)

    wire = Wire(broker, [])
    broker._recv_frames = recv
    broker._drain(broker.gen_sock, broker._on_generator_message)
    assert broker.generator is None
    assert not broker._pending and not broker._outbox
    assert wire.sent_to_generator() == []
