"""CURVE: only allowlisted keys get in, each only in its own role and under its own name."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from dgan import protocol as P
from dgan.security import KeyError_, client_setup, generate_keys, load_allowlist
from dgan.transport.zmq_link import ZmqGeneratorLink, ZmqNodeLink
from tests.conftest import start_broker

FAST = {"heartbeat_interval": 0.3, "liveness": 3}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    allowed = tmp_path / "authorized"
    generate_keys(d, "broker", "broker")
    for name, role in (("generator", "generator"), ("alice", "node"), ("bob", "node")):
        public, _ = generate_keys(d, name, role)
        allowed.mkdir(exist_ok=True)
        (allowed / public.name).write_bytes(public.read_bytes())
    generate_keys(d, "eve", "node")  # a valid key pair that nobody authorized
    return d


def _setup(keys: Path, name: str):
    return client_setup(keys / f"{name}.key_secret", keys / "broker.key")


def _recv(link, kind: P.Kind, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = link.recv(0.1)
        msg = got[1] if isinstance(got, tuple) else got
        if msg is not None and msg.kind == kind:
            return got
    return None


def test_curve_allows_listed_keys_and_enforces_role_and_name(keys: Path, tmp_path: Path) -> None:
    assert {i.name: i.role for i in load_allowlist(tmp_path / "authorized").values()} == {
        "generator": "generator", "alice": "node", "bob": "node"}
    bp = start_broker(tmp_path, "--secret-key", str(keys / "broker.key_secret"), "--authorized-keys",
                      str(tmp_path / "authorized"))
    gen = ZmqGeneratorLink(bp.generator, socket_setup=_setup(keys, "generator"), **FAST)
    alice = ZmqNodeLink(bp.node, "alice", socket_setup=_setup(keys, "alice"), **FAST)
    eve = ZmqNodeLink(bp.node, "eve", socket_setup=_setup(keys, "eve"), **FAST)
    mallory = ZmqNodeLink(bp.node, "alice", socket_setup=_setup(keys, "bob"), **FAST)  # bob's key, alice's name
    try:
        route, _ = _recv(gen, P.Kind.HELLO, 5)
        assert route == "alice"
        alice.send(P.make(P.Kind.FAKE_REQUEST, "alice", tensors={"masks": np.zeros((1, 4, 4), np.uint8)}))
        route, _msg = _recv(gen, P.Kind.FAKE_REQUEST, 5)
        assert route == "alice"
        # eve's handshake is refused: she receives nothing at all and the generator never hears of her
        eve.send(P.make(P.Kind.FAKE_REQUEST, "eve", tensors={"masks": np.zeros((1, 4, 4), np.uint8)}))
        assert eve.sock.poll(1000) == 0
        err = _recv(mallory, P.Kind.ERROR, 5)
        assert err is not None and err.meta["code"] == P.ErrorCode.SPOOFED_SENDER
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # nothing from eve or mallory reached the generator
            got = gen.recv(0.1)
            assert got is None or got[0] == "alice", got
    finally:
        for link in (gen, alice, eve, mallory):
            link.close()
        bp.proc.terminate()
        bp.proc.wait(10)


def test_a_node_key_cannot_act_as_the_generator(keys: Path, tmp_path: Path) -> None:
    bp = start_broker(tmp_path, "--secret-key", str(keys / "broker.key_secret"), "--authorized-keys",
                      str(tmp_path / "authorized"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    _setup(keys, "alice")(sock)
    sock.connect(bp.generator)
    try:
        sock.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "gen", meta={"role": "generator"}))])
        assert sock.poll(5000)
        msg = P.decode(sock.recv_multipart()[1:])
        assert msg.kind == P.Kind.ERROR and msg.meta["code"] == P.ErrorCode.FORBIDDEN
    finally:
        sock.close()
        bp.proc.terminate()
        bp.proc.wait(10)


def test_bad_key_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="does not exist"):
        load_allowlist(tmp_path / "nope")
    public, _secret = generate_keys(tmp_path, "n1", "node")
    with pytest.raises(KeyError_, match="no secret key"):
        client_setup(public, public)
    (tmp_path / "plain.key").write_text("not a key")
    with pytest.raises(KeyError_):
        load_allowlist(tmp_path)
    with pytest.raises(ValueError, match="role"):
        generate_keys(tmp_path, "x", "superuser")
