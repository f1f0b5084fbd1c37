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


def requests(count: int) -> tuple[list[list[Any]], list[int]]:
    """``count`` FAKE_REQUESTs, alternating between the two nodes, as the node socket delivers them."""
    inbound, ids = [], []
    for i in range(count):
        name = ("n1", "n2")[i % 2]
        msg = P.make(P.Kind.FAKE_REQUEST, name, tensors={"masks": np.zeros((1, 4, 4), np.uint8) + 2})
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
