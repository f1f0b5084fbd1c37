"""Shared fixtures: free ports and a broker running in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dgan.commands import Ports, broker_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _untuned_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dgan` commands invoked in this process (CliRunner) leave glibc's malloc as it is: mallopt cannot be undone,
    so a tuned pytest process would make tests behave by their order. tests/test_malloc_tuning.py tunes in
    subprocesses, or through a stand-in mallopt."""
    monkeypatch.setenv("DGAN_MALLOC_TUNING", "0")


def feedback_step(trainer, key: int) -> None:
    """One generator step on a made-up gradient (all ones) for two 32 px masks with a square in them."""
    import numpy as np

    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    fakes = trainer.generate("n", key, masks, request_id=key)
    trainer.apply_feedback("n", key, np.ones_like(fakes, dtype=np.float32))
    trainer.update()


def one_node_service(tmp_path: Path, requests: int, **train):
    """A generator service (a tiny G, in process) with node ``a`` welcomed and ``requests`` fakes served to it.
    Returns (service, trainer, those FAKES messages in order)."""
    import numpy as np

    from dgan import protocol as P
    from dgan.networks import ModelConfig
    from dgan.training.generator import GeneratorTrainer, TrainConfig
    from dgan.transport.inproc import InProcessHub
    from nodes.generator_service import GeneratorService, ServiceConfig

    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=100, fake_dtype="float32", **train))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(
        out=tmp_path, sample_every=0, checkpoint_every=0, synthesize=False))
    link = hub.node_link("a")
    service.handle("a", P.make(P.Kind.HELLO, "a", meta={"role": "node", "dataset_size": 1}))
    assert link.recv(1).kind == P.Kind.WELCOME
    fakes = []
    for _ in range(requests):
        service.handle("a", P.make(P.Kind.FAKE_REQUEST, "a", tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fakes.append(link.recv(1))
    return service, trainer, fakes


def feedback_for(fakes, good: bool = True):
    """A node's FEEDBACK on ``fakes`` (a FAKES message): a small constant gradient, or (``good=False``) one of the
    wrong shape."""
    import numpy as np

    from dgan import protocol as P

    shape = fakes.tensors["fakes"].shape if good else (1, 3, 2, 2)
    return P.make(P.Kind.FEEDBACK, "x", run_id=fakes.run_id, reply_to=fakes.msg_id, meta={"losses": {}},
                  tensors={"grad": np.full(shape, 1e-3, np.float32)})


def answer_late(gen, node, masks, reals, staleness: int, key: int = 100):
    """Fakes for request ``key``; G then steps ``staleness`` times on other feedback; the node scores the old
    fakes last. Returns (those fakes, the node's late score). ``key`` must exceed ``staleness`` (the other
    requests are keys 1..staleness)."""
    old = gen.generate("n0", key, masks, request_id=key)
    for k in range(1, staleness + 1):
        s = node.score(masks, reals, gen.generate("n0", k, masks, request_id=k), "float32")
        gen.apply_feedback("n0", k, s.grad, s.grad_scale)
        assert gen.update()
    return old, node.score(masks, reals, old, "float32")


def proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, from /proc (fields 3, 4 and 22 of proc(5)); None when it
    is gone. Bytes: the command name before ``)`` need not be UTF-8."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1]), fields[19].decode()


def running(pid: int, started: str) -> bool:
    """That very process (not a later one with its pid) is alive and not a zombie waiting to be reaped."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


def children_of(pid: int) -> dict[int, str]:
    """Live children of ``pid``: their pids and start times (for :func:`running`)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(int(entry.name))
        if stat is not None and stat[1] == pid and stat[0] != "Z":
            found[int(entry.name)] = stat[2]
    return found


def wait_until(pred, timeout: float, what: str) -> None:
    """Poll ``pred`` every 0.2 s; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[bytes]
    node: str
    generator: str
    pub: str
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_broker(tmp_path: Path, *extra: str, heartbeat: float = 0.3,
                 ports: list[int] | None = None) -> BrokerProcess:
    where = Ports(*ports) if ports else Ports.free()
    node_port, gen_port, pub_port = where.node, where.generator, where.pub
    out = tmp_path / f"broker-{node_port}.log"
    cmd = [sys.executable, "-m", "dgan", *broker_args(where, heartbeat=heartbeat, extra=list(extra))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    bp = BrokerProcess(proc, f"tcp://127.0.0.1:{node_port}", f"tcp://127.0.0.1:{gen_port}",
                       f"tcp://127.0.0.1:{pub_port}", out)
    deadline = time.monotonic() + 30
    while "broker serving" not in bp.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"broker did not start:\n{bp.output()}")
        time.sleep(0.05)
    return bp


@pytest.fixture
def broker_proc(tmp_path: Path) -> Iterator[BrokerProcess]:
    bp = start_broker(tmp_path)
    yield bp
    if bp.proc.poll() is None:
        bp.proc.terminate()
        try:
            bp.proc.wait(10)
        except subprocess.TimeoutExpired:
            bp.proc.kill()


@pytest.fixture
def serve_one_node(tmp_path: Path):
    """Run one in-process DiscriminatorNode against a GeneratorService until the generator's steps are done."""
    import threading

    from dgan import protocol as P
    from dgan.feedback import FeedbackConfig
    from dgan.training.generator import GeneratorTrainer, TrainConfig
    from dgan.transport.inproc import InProcessHub
    from nodes.discriminator_node import DiscriminatorNode, NodeConfig
    from nodes.generator_service import GeneratorService, ServiceConfig

    def serve(model, steps: int, name: str, images, masks, **node_cfg):
        hub = InProcessHub()
        trainer = GeneratorTrainer(model, TrainConfig(steps=steps, fake_dtype="float32"))
        service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path, sample_every=0,
                                                                                checkpoint_every=0))
        link = hub.node_link(name)
        link.send(P.make(P.Kind.HELLO, name, meta={"role": "node", **DiscriminatorNode.hello_meta(images)}))
        settings = {"batch_size": 2, "judge": False, "feedback": FeedbackConfig(warmup=0), **node_cfg}
        node = DiscriminatorNode(link, images, masks, NodeConfig(name, **settings))
        stop = threading.Event()
        thread = threading.Thread(target=node.run, args=(stop,), daemon=True)
        thread.start()
        service.run()
        stop.set()
        thread.join(10)
        return service, node

    return serve


@pytest.fixture
def started_runs(monkeypatch: pytest.MonkeyPatch) -> list:
    """What `dgan run` would start: each RunConfig, kept here instead of starting broker, generator and nodes."""
    import dgan.cli_runs as cli_runs

    started: list = []
    monkeypatch.setattr(cli_runs, "_run_with_view", lambda cfg, *a, **k: started.append(cfg))
    return started


@pytest.fixture
def captured_experiments(monkeypatch: pytest.MonkeyPatch) -> list:
    """What `dgan experiment` would run: each ExperimentConfig, kept here; the command then stops with exit code 2
    and "captured" in its output, before any training."""
    import dgan.experiment as ex

    got: list = []

    def capture(cfg: object) -> dict[str, object]:
        got.append(cfg)
        raise ex.ExperimentSetupError("captured")

    monkeypatch.setattr(ex, "run_experiment", capture)
    return got
