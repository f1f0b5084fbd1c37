"""CURVE: only keys the operator authorized get in, each only in the role and under the name the operator gave."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from dgan import protocol as P
from dgan.security import KeyError_, authorize, client_setup, generate_keys, load_allowlist
from dgan.transport.zmq_link import ZmqGeneratorLink, ZmqNodeLink
from tests.conftest import start_broker

FAST = {"heartbeat_interval": 0.3, "liveness": 3}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    allowed = tmp_path / "authorized"
    generate_keys(d, "broker", "broker")
    for name, role in (("generator", "generator"), ("alice", "node"), ("bob", "node"), ("gen2", "generator")):
        public, _ = generate_keys(d, name, role)
        authorize(allowed, public, role, name)
    generate_keys(d, "eve", "node")  # a valid key pair that nobody authorized
    generate_keys(d, "minted", "generator")  # a department's key that claims to be a generator...
    authorize(allowed, d / "minted.key", "node", "dept-c")  # ...which the operator authorized as a node
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
        "generator": "generator", "alice": "node", "bob": "node", "gen2": "generator", "dept-c": "node"}
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
        assert eve.recv(1.0) is None and eve.counters["received"] == 0
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


def _generator_hello(keys: Path, key: str, endpoint: str) -> P.Message | None:
    """HELLO on the generator port with ``key``; the first message back (an ERROR, or the nodes' HELLOs)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    _setup(keys, key)(sock)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "gen", meta={"role": "generator"}))])
        if not sock.poll(3000):
            return None
        return P.decode(sock.recv_multipart()[1:])
    finally:
        sock.close()


@pytest.mark.parametrize("key", ["alice", "minted"])  # minted: its own file says "generator"; the operator said node
def test_a_node_key_cannot_act_as_the_generator(keys: Path, tmp_path: Path, key: str) -> None:
    bp = start_broker(tmp_path, "--secret-key", str(keys / "broker.key_secret"), "--authorized-keys",
                      str(tmp_path / "authorized"))
    try:
        msg = _generator_hello(keys, key, bp.generator)
        assert msg is not None and msg.kind == P.Kind.ERROR and msg.meta["code"] == P.ErrorCode.FORBIDDEN
    finally:
        bp.proc.terminate()
        bp.proc.wait(10)


def test_only_one_generator_at_a_time_unless_the_same_key_takes_over_after_a_restart(keys: Path,
                                                                                        tmp_path: Path) -> None:
    bp = start_broker(tmp_path, "--secret-key", str(keys / "broker.key_secret"), "--authorized-keys",
                      str(tmp_path / "authorized"), heartbeat=2.0)  # expiry after 6 s
    alice = ZmqNodeLink(bp.node, "alice", socket_setup=_setup(keys, "alice"), **FAST)
    crashed = zmq.Context.instance().socket(zmq.DEALER)  # registers, then falls silent as a kill -9 would
    crashed.setsockopt(zmq.LINGER, 0)
    _setup(keys, "generator")(crashed)
    crashed.connect(bp.generator)
    try:
        time.sleep(0.5)  # alice is registered first
        crashed.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "gen", meta={"role": "generator"}))])
        assert crashed.poll(3000)  # registered: the broker passes on alice's HELLO
        assert P.decode(crashed.recv_multipart()[1:]).kind == P.Kind.HELLO
        second = _generator_hello(keys, "gen2", bp.generator)  # another authorized generator key
        assert second is not None and second.meta["code"] == P.ErrorCode.NAME_IN_USE
        twin = _generator_hello(keys, "generator", bp.generator)  # the same key while the first still talks
        assert twin is not None and twin.meta["code"] == P.ErrorCode.NAME_IN_USE
        time.sleep(2.6)  # the first has been silent past one heartbeat, not yet expired: a restart
        again = _generator_hello(keys, "generator", bp.generator)
        assert again is not None and again.kind == P.Kind.HELLO and again.sender == "alice"  # accepted, told of alice
    finally:
        crashed.close()
        alice.close()
        bp.proc.terminate()
        bp.proc.wait(10)
    assert "a new generator gen replaces gen" in bp.output()


def test_bad_key_files_and_allowlists_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="cannot read the allowlist"):
        load_allowlist(tmp_path / "nope")
    with pytest.raises(KeyError_, match="is a folder"):
        load_allowlist(tmp_path)
    bad = tmp_path / "allow"
    for text, why in (("node alice\n", "expected"), ("root alice " + "a" * 40 + "\n", "role"),
                      ("node ../x " + "a" * 40 + "\n", "name"), ("node alice short\n", "z85")):
        bad.write_text(text)
        bad.chmod(0o600)  # whatever the umask: the check under test is the content
        with pytest.raises(KeyError_, match=why):
            load_allowlist(bad)
    public, _ = generate_keys(tmp_path / "k", "n1", "node")
    authorize(tmp_path / "list", public, "node", "n1")
    hashed = "#" * 40  # '#' is a z85 character: a key may hold it anywhere
    (tmp_path / "hash").write_text(f"# comment\nnode h {hashed}\n")
    (tmp_path / "hash").chmod(0o600)
    assert list(load_allowlist(tmp_path / "hash")) == [hashed.encode()]
    with pytest.raises(KeyError_, match="already authorized"):
        authorize(tmp_path / "list", public, "node", "n2")
    other, _ = generate_keys(tmp_path / "k", "n2", "node")
    with pytest.raises(KeyError_, match="already authorized"):
        authorize(tmp_path / "list", other, "node", "n1")
    assert (tmp_path / "list").stat().st_mode & 0o077 == 0  # only the operator reads and writes it
    (tmp_path / "list").chmod(0o664)
    with pytest.raises(KeyError_, match="writable by others"):
        load_allowlist(tmp_path / "list")
    public, _secret = generate_keys(tmp_path, "n1", "node")
    with pytest.raises(KeyError_, match="no secret key"):
        client_setup(public, public)
    (tmp_path / "plain.key").write_text("not a key")
    with pytest.raises(KeyError_):
        authorize(tmp_path / "list", tmp_path / "plain.key", "node", "n3")
    with pytest.raises(ValueError, match="role"):
        generate_keys(tmp_path, "x", "superuser")
