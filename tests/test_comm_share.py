"""The honest communication share: a node's round trips less the time the generator held each request."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dgan import protocol as P
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import DiscriminatorNode, NodeConfig, Outstanding

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_in_process_round_trips_are_the_generators_time_not_the_wires(serve_one_node: Any) -> None:
    images, masks = make_scenes(range(6), 32)
    _, node = serve_one_node(MODEL, 8, "n0", images, masks)
    s = node.stats.to_dict()
    assert s["batches"] >= 8 and s["rtt_s"] > 0 and s["active_s"] > 0
    # no wire in-process: the generator held each request for nearly all of its round trip
    assert 0 <= s["wire_s"] < 0.5 * s["rtt_s"], s
    assert 0 <= s["comm_wait_s"] <= s["wait_s"] <= s["active_s"] + 1.0


def test_a_held_time_that_is_not_a_sane_number_counts_as_zero() -> None:
    images, masks = make_scenes(range(2), 32)
    hub = InProcessHub()
    node = DiscriminatorNode(hub.node_link("n0"), images, masks, NodeConfig("n0", batch_size=2, judge=False))
    node.trainer, node.run_id = DiscriminatorTrainer(MODEL, FeedbackConfig(warmup=0)), "r1"

    fakes = np.zeros((2, 3, 32, 32), np.float32)
    for held in ("soon", -1.0, 1e12, float("nan"), True):
        node.outstanding[7] = Outstanding(masks, images, 0.0)  # sent at monotonic 0: the round trip is "now"
        before, t0 = node.stats.wire_s, time.monotonic()
        node._on_fakes(P.make(P.Kind.FAKES, "generator", reply_to=7, meta={"held_s": held}, tensors={"fakes": fakes}))
        assert t0 <= node.stats.wire_s - before <= time.monotonic(), held  # held counted as 0: wire = round trip
    node.outstanding[7] = Outstanding(masks, images, 0.0)
    before, t0 = node.stats.wire_s, time.monotonic()
    node._on_fakes(P.make(P.Kind.FAKES, "generator", reply_to=7, meta={"held_s": 2.0}, tensors={"fakes": fakes}))
    assert t0 - 2.0 <= node.stats.wire_s - before <= time.monotonic() - 2.0  # a sane held time is taken off
