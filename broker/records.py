"""The broker's configuration and its tiny record of each peer (Majordomo style)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dgan import protocol as P


class RecordingFailed(Exception):
    """The message log cannot be written. Policy: the broker stops with this error rather than route unrecorded
    messages, since the log is the run's audit trail; every peer survives a broker restart."""


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    node_port: int = 5555
    generator_port: int = 5556
    pub_port: int = 5557
    heartbeat_interval: float = 2.5
    liveness: int = 3
    hwm: int = 64
    limits: P.Limits = field(default_factory=P.Limits)
    record: Path | None = None
    flush_interval: float = 0.5
    rotate_bytes: int = 0
    secret_key: Path | None = None  # CURVE: the broker's .key_secret
    authorized_keys: Path | None = None  # CURVE: the operator's allowlist file (role, name, key per line)
    drain_batch: int = 64
    send_burst: int = 16  # messages to the generator sent back to back, at most (see Broker._flush_outbox)
    send_burst_bytes: int = 1024 * 1024  # ... and bytes: large messages gain nothing from bursts, so they go alone
    max_nodes: int = 1024  # registered nodes at once: bounds the broker's peer table (and names, in plain TCP)
    build_arrays: bool = False  # the broker routes tensors unread: validate descriptors only (bench: True = before)
    pyzmq_multipart: bool = False  # bench only: pyzmq's Python send/recv_multipart instead of dgan.transport.multipart

    def endpoint(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{port}"

    @property
    def node_endpoint(self) -> str:
        return self.endpoint(self.node_port)

    @property
    def generator_endpoint(self) -> str:
        return self.endpoint(self.generator_port)

    @property
    def pub_endpoint(self) -> str:
        return self.endpoint(self.pub_port)


@dataclass
class PeerRecord:
    """What the broker knows of one peer."""

    identity: bytes
    name: str
    role: str
    expires_at: float
    joined_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    errors: int = 0
    hello: list[bytes] = field(default_factory=list)  # replayed to a generator that (re)joins
    key: str | None = None  # CURVE: the z85 public key this connection authenticated with
    route: bytes = field(init=False, repr=False, compare=False)  # the name as a routing frame, from ``name``

    def __post_init__(self) -> None:
        self.route = self.name.encode()


