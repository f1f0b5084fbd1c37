"""Liveness is separate from compute: slow peers stay registered (processes over tcp://127.0.0.1)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from dgan import protocol as P
from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig
from dgan.networks import ModelConfig
from dgan.run import ProcessGroup, RunConfig, write_shards
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import DiscriminatorNode, NodeConfig

HEARTBEAT = 0.2  # peers expire after 3 silent intervals: 0.6 s


def test_a_node_slower_than_the_expiry_feeds_back_every_batch_and_a_long_synthesis_keeps_the_generator(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    shards = write_shards(RunConfig(nodes=1, out=out, scenes=480, image_size=64))  # synthesis: several expiries
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    steps, delay = 4, 2.0  # each D step takes 3x longer than a silent peer may live
    try:
        group.start("broker", broker_args(ports, heartbeat=HEARTBEAT), 1)
        gen = group.start("generator", generator_args(ports, out, steps, image_size=64, g_width=32,
                                                      checkpoint_every=0, heartbeat=HEARTBEAT), 1)
        node = group.start("slow", node_args(ports, "slow", shards[0], image_size=64, batch_size=2,
                                             heartbeat=HEARTBEAT,
                                             extra=["--pipeline", "1", "--d-warmup", "0", "--delay", str(delay)]), 1)
        assert gen.wait(240) == 0
        assert node.wait(60) == 0
    finally:
        group.stop_all()
    logs = {n: (out / "logs" / f"{n}.log").read_text() for n in ("broker", "generator", "slow")}
    summary = json.loads((out / "run.json").read_text())
    slow = summary["nodes"]["slow"]
    assert slow["feedbacks"] == steps and slow["counts"].get("dropped_stale", 0) == 0, slow
    assert "no message for" not in logs["broker"], logs["broker"]  # no peer expired
    assert "generator generator left (said goodbye)" in logs["broker"]  # it left when it was done, and said so
    assert "hello again" not in logs["slow"] + logs["generator"]  # no re-registration
    assert "reconnecting" not in logs["slow"] + logs["generator"]
    synthesis = float(re.search(r"synthesised 480 images in ([\d.]+) s", logs["generator"]).group(1))
    assert synthesis > 3 * HEARTBEAT * 3, synthesis  # long enough that the old links would have expired


class _FlakyLink:
    """A node link whose first ``failures`` FEEDBACK sends cannot leave (a broker that is away)."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner, self.failures, self.name = inner, failures, inner.name
        self.feedback_tries = 0

    def send(self, msg: P.Message) -> bool:
        if msg.kind == P.Kind.FEEDBACK:
            self.feedback_tries += 1
            if self.failures > 0:
                self.failures -= 1
                return False
        return self.inner.send(msg)

    def recv(self, timeout: float) -> P.Message | None:
        return self.inner.recv(timeout)

    def close(self) -> None:
        self.inner.close()


def _one_scored_batch(failures: int, retry: float) -> tuple[DiscriminatorNode, _FlakyLink, Any]:
    """A node welcomed, one request served with zero fakes, scored; its FEEDBACK meets ``failures`` refusals."""
    hub = InProcessHub()
    gen = hub.generator_link()
    link = _FlakyLink(hub.node_link("n0"), failures)
    images, masks = make_scenes(range(4), 32)
    node = DiscriminatorNode(link, images, masks, NodeConfig("n0", batch_size=2, pipeline=1,
                                                             feedback=FeedbackConfig(warmup=0), feedback_retry=retry))
    model = ModelConfig(image_size=32, g_width=8, d_width=8).to_dict()
    node._handle(P.make(P.Kind.WELCOME, "generator", run_id="r", meta={"config": {"model": model,
                                                                                  "need_masks": False}}))
    node._fill_pipeline()
    _, request = gen.recv(1.0)
    assert request.kind == P.Kind.FAKE_REQUEST
    fakes = np.zeros((len(request.tensors["masks"]), 3, 32, 32), np.float16)
    node._handle(P.make(P.Kind.FAKES, "generator", run_id="r", reply_to=request.msg_id, tensors={"fakes": fakes}))
    return node, link, gen


def test_feedback_that_could_not_leave_is_retried_until_it_does() -> None:
    node, link, gen = _one_scored_batch(failures=2, retry=30.0)
    assert len(node.unsent) == 1 and gen.recv(0.05) is None
    node._resend_feedback()  # refused again
    node._resend_feedback()  # taken
    _, msg = gen.recv(1.0)
    assert msg.kind == P.Kind.FEEDBACK and not node.unsent
    assert link.feedback_tries == 3 and node.stats.errors["feedback_resent"] == 1


def test_feedback_that_never_leaves_is_given_up_after_its_retry_time_and_reported() -> None:
    node, _link, gen = _one_scored_batch(failures=10_000, retry=0.3)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        node._resend_feedback()
        time.sleep(0.05)
    node._resend_feedback()
    assert not node.unsent and node.stats.errors["feedback_unsent"] == 1 and gen.recv(0.05) is None
    assert node.stats.batches == 1  # the batch was done; only its feedback was lost, and that is counted


def test_a_link_whose_io_thread_died_refuses_sends_and_ends_the_generator_run_with_its_outputs(
        tmp_path: Path) -> None:
    from dgan.training.generator import GeneratorTrainer, TrainConfig
    from dgan.transport.base import LinkClosed
    from dgan.transport.zmq_link import ZmqGeneratorLink
    from nodes.generator_service import GeneratorService, ServiceConfig

    ports = Ports.free()  # nobody listens: the link just keeps trying
    link = ZmqGeneratorLink(ports.generator_endpoint, heartbeat_interval=0.1)
    link._failure = RuntimeError("simulated I/O failure")
    link._stop.set()  # the thread ends as a failed one would
    link._wake()
    link._thread.join(5)
    assert not link._thread.is_alive()
    assert link.send("n", P.make(P.Kind.STATUS, "generator")) is False  # "could not leave", never an exception
    try:
        link.recv(0.1)
        raise AssertionError("recv on a failed link must raise")
    except LinkClosed:
        pass
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4), TrainConfig(steps=5))
    summary = GeneratorService(link, trainer, ServiceConfig(out=tmp_path, sample_every=0, checkpoint_every=0)).run()
    assert summary["steps"] == 0 and (tmp_path / "run.json").exists()
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    link.close()
