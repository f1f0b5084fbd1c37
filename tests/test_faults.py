"""Faults with real processes: the broker killed and restarted, several hosts with a cut link, a slow consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from benchmarks.fuzz_broker import rss_mb
from benchmarks.netlab import NetLab, NetLabUnavailable
from dgan import protocol as P
from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.run import ProcessGroup, RunConfig, write_shards
from tests.conftest import ROOT, start_broker, wait_until

SMALL = ["--image-size", "32", "--g-width", "8", "--g-depth", "3", "--d-width", "8"]


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_broker_kill_9_and_restart_everyone_reregisters_and_training_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    shards = write_shards(RunConfig(nodes=2, out=out, scenes=8, image_size=32))
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    try:
        broker = group.start("broker", broker_args(ports, heartbeat=0.5), 1)
        gen = group.start("generator", generator_args(ports, out, 400, checkpoint_every=20, synthesize=False,
                                                      heartbeat=0.5, extra=SMALL), 1)
        for i in range(2):
            group.start(f"node{i}", node_args(ports, f"node{i}", shards[i], image_size=32, batch_size=2,
                                              heartbeat=0.5), 1)
        wait_until(lambda: (out / "checkpoints" / "ckpt_000020.pt").exists(), 120, "progress before the kill")
        os.kill(broker.pid, signal.SIGKILL)
        broker.wait()
        killed_at = time.monotonic()
        time.sleep(1.0)
        group.start("broker2", broker_args(ports, heartbeat=0.5), 1)
        # both nodes say hello to the new broker, which passes them to the re-registered generator
        wait_until(lambda: _text(out / "logs" / "broker2.log").count("joined") >= 2, 10, "re-registration")
        assert time.monotonic() - killed_at < 12
        reached = max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("ckpt_*.pt"))
        wait_until(lambda: (out / "checkpoints" / f"ckpt_{reached + 40:06d}.pt").exists(), 120,
              "training to continue after the restart")
        gen.send_signal(signal.SIGTERM)
        assert gen.wait(60) == 0
    finally:
        group.stop_all()
    assert "generator" in _text(out / "logs" / "broker2.log")  # the generator registered again by itself


# --------------------------------------------------------------------------- several hosts


@pytest.fixture
def hosts() -> Iterator[NetLab]:
    """Four hosts (broker, generator, node1, node2) in their own network namespaces on one bridge."""
    try:
        lab = NetLab(["b", "g", "n1", "n2"]).__enter__()
    except NetLabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield lab
    finally:
        lab.close()


def test_four_hosts_train_and_a_node_rejoins_after_its_link_is_cut(hosts: NetLab, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shards = write_shards(RunConfig(nodes=2, out=out, scenes=8, image_size=32))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    b = hosts.hosts["b"].addr
    ports = Ports(5555, 5556, 5557, host=b)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, host: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(out / "logs" / f"{name}.log", "wb") as fh:
            procs[name] = subprocess.Popen([*hosts.hosts[host].prefix, sys.executable, "-m", "dgan", *args],
                                           stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        return procs[name]

    try:
        start("broker", "b", broker_args(ports, heartbeat=0.5))
        gen = start("generator", "g", generator_args(ports, out, 1_000_000, checkpoint_every=10,
                                                               synthesize=False, heartbeat=0.5, extra=SMALL))
        for i, h in ((1, "n1"), (2, "n2")):
            start(f"node{i}", h, node_args(ports, f"node{i}", shards[i - 1], image_size=32,
                                                          batch_size=2, heartbeat=0.5))
        wait_until(lambda: (out / "checkpoints" / "ckpt_000020.pt").exists(), 120, "training across hosts")
        hosts.set_link("n2", up=False)
        wait_until(lambda: "node node2 left" in _text(out / "logs" / "generator.log"), 20, "the cut node to expire")
        cut_step = max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("ckpt_*.pt"))
        hosts.set_link("n2", up=True)
        wait_until(lambda: "node node2 said hello again" in _text(out / "logs" / "generator.log"), 30,
                   "node2 to rejoin")
        time.sleep(3)  # let it train again
        gen.send_signal(signal.SIGTERM)  # the generator ends the run, writing run.json and feedback.json
        assert gen.wait(60) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] > cut_step + 20  # training went on through the cut and after it
    assert summary["nodes"]["node2"]["alive_at_end"] and summary["nodes"]["node1"]["feedbacks"] > 0
    rejoined = [r for r in json.loads((out / "feedback.json").read_text())["rows"] if r[1] == "node2"
                and r[2] > cut_step]
    assert rejoined, "node2 contributed nothing after it rejoined"


# --------------------------------------------------------------------------- slow consumer


def raw_peers(bp, gen_rcvhwm: int, node_sndhwm: int = 1000) -> tuple[zmq.Socket, zmq.Socket]:
    """A bare generator DEALER that reads only when told, and a registered node DEALER."""
    ctx = zmq.Context.instance()
    gen = ctx.socket(zmq.DEALER)
    gen.setsockopt(zmq.RCVHWM, gen_rcvhwm)
    gen.setsockopt(zmq.LINGER, 0)
    gen.connect(bp.generator)
    gen.send_multipart([b"", *P.encode(P.make(P.Kind.HELLO, "g", meta={"role": "generator"}))])
    node = ctx.socket(zmq.DEALER)
    node.setsockopt(zmq.SNDHWM, node_sndhwm)
    node.setsockopt(zmq.LINGER, 0)
    node.connect(bp.node)
    node.send_multipart(P.encode(P.make(P.Kind.HELLO, "n", meta={"role": "node"})))
    return gen, node


def test_slow_generator_bounds_broker_memory_and_loses_nothing_accepted(tmp_path: Path) -> None:
    bp = start_broker(tmp_path)
    gen, node = raw_peers(bp, gen_rcvhwm=4, node_sndhwm=16)
    time.sleep(0.5)
    base = rss_mb(bp.proc.pid)
    payload = np.zeros((1, 512, 1024), np.uint8)  # 512 KiB per message
    accepted = 0
    try:
        beat = [b"", *P.encode(P.make(P.Kind.HEARTBEAT, "g"))]
        deadline = time.monotonic() + 10
        last_beat, last_accept = 0.0, time.monotonic()
        # The generator is alive (heartbeats) but reads nothing: once the pipes and the broker's queue are full,
        # nothing more may be accepted. How many fit depends on the kernel's socket buffers (407 on one VM kind),
        # so the test waits for the stall itself: 1.5 s with nothing accepted.
        while time.monotonic() < deadline and time.monotonic() - last_accept < 1.5:
            if time.monotonic() - last_beat > 0.1:
                gen.send_multipart(beat)
                last_beat = time.monotonic()
            try:
                node.send_multipart(P.encode(P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": payload})),
                                    flags=zmq.NOBLOCK)
                accepted += 1
                last_accept = time.monotonic()
            except zmq.Again:
                time.sleep(0.01)  # back-pressure reached the sender
        peak = rss_mb(bp.proc.pid)
        assert time.monotonic() - last_accept >= 1.5, f"the sender was never held back ({accepted} accepted)"
        assert peak - base < 200, (base, peak)  # bounded by high-water marks, not by what was offered
        got, errors = 0, 0
        end = time.monotonic() + 20
        while got + errors < accepted and time.monotonic() < end:
            if gen.poll(500):
                frames = gen.recv_multipart()
                kind = P.decode(frames[1:]).kind
                got += kind == P.Kind.FAKE_REQUEST
            while node.poll(0):
                errors += P.decode(node.recv_multipart()).kind == P.Kind.ERROR
        assert got + errors == accepted and errors == 0, (accepted, got, errors)  # every message arrived
    finally:
        gen.close()
        node.close()
        bp.proc.terminate()
        bp.proc.wait(10)


def test_messages_parked_for_a_generator_that_dies_go_back_to_their_sender(tmp_path: Path) -> None:
    bp = start_broker(tmp_path)  # heartbeat 0.3 s: a silent generator expires after 0.9 s
    gen, node = raw_peers(bp, gen_rcvhwm=1)
    time.sleep(0.2)
    payload = np.zeros((1, 1024, 1024), np.uint8)
    try:
        for _ in range(200):  # more than the pipes hold: some must park at the broker
            try:
                node.send_multipart(P.encode(P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": payload})),
                                    flags=zmq.NOBLOCK)
            except zmq.Again:
                break
        reasons = []
        end = time.monotonic() + 10
        while time.monotonic() < end and not any("left" in r for r in reasons):
            if node.poll(200):
                msg = P.decode(node.recv_multipart())
                if msg.kind == P.Kind.ERROR:
                    reasons.append(msg.meta["reason"])
        assert any("the generator left" in r and "before this message reached it" in r for r in reasons), reasons
    finally:
        gen.close()
        node.close()
        bp.proc.terminate()
        bp.proc.wait(10)
