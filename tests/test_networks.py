"""Model shapes, multi-class masks, and the generator refusing masks it cannot use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgan import protocol as P
from dgan.networks import ModelConfig, define_D, define_G, masks_to_input
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig
from dgan.transport.inproc import InProcessHub
from nodes.generator_service import GeneratorService, ServiceConfig


@pytest.mark.parametrize("upsample", ["bilinear", "deconv"])
def test_generator_maps_masks_to_images_in_range(upsample: str) -> None:
    cfg = ModelConfig(image_size=64, g_width=8, g_depth=4, upsample=upsample)
    out = define_G(cfg)(masks_to_input(torch.zeros(2, 64, 64, dtype=torch.uint8), 2))
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    logits = define_D(cfg)(masks_to_input(torch.zeros(2, 64, 64, dtype=torch.uint8), 2), out)
    assert logits.ndim == 4 and logits.shape[1] == 1 and logits.shape[-1] > 1  # a patch map, not one score


def test_multi_class_masks_train_end_to_end() -> None:
    cfg = ModelConfig(image_size=32, num_classes=4, g_width=8, g_depth=3, d_width=8, d_layers=2)
    masks = np.random.default_rng(0).integers(0, 4, (2, 32, 32), dtype=np.uint8)
    x = masks_to_input(torch.from_numpy(masks), 4)
    assert x.shape == (2, 4, 32, 32) and torch.equal(x.sum(1), torch.ones(2, 32, 32))
    gen = GeneratorTrainer(cfg, TrainConfig(fake_dtype="float32"))
    fakes = gen.generate("n", 1, masks, request_id=1)
    reals = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    scored = DiscriminatorTrainer(cfg).score(masks, reals, fakes)
    assert gen.apply_feedback("n", 1, scored.grad, scored.grad_scale)[0] == Outcome.APPLIED
    assert gen.update()


def test_generator_service_rejects_masks_of_the_wrong_size_or_classes(tmp_path) -> None:
    hub = InProcessHub()
    cfg = ModelConfig(image_size=32, g_width=8, g_depth=3)
    service = GeneratorService(hub.generator_link(), GeneratorTrainer(cfg, TrainConfig()), ServiceConfig(out=tmp_path))
    link = hub.node_link("n")
    service.handle("n", P.make(P.Kind.HELLO, "n", meta={"role": "node", "dataset_size": 3}))
    assert link.recv(1).kind == P.Kind.WELCOME
    for masks in (np.zeros((1, 16, 16), np.uint8), np.full((1, 32, 32), 7, np.uint8)):
        service.handle("n", P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": masks}))
        err = link.recv(1)
        assert err.kind == P.Kind.ERROR and err.meta["code"] == P.ErrorCode.REJECTED
    service.handle("n", P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": np.ones((1, 32, 32), np.uint8)}))
    assert link.recv(1).kind == P.Kind.FAKES


def test_a_node_that_keeps_sending_bad_messages_is_ignored_after_the_limit(tmp_path) -> None:
    hub = InProcessHub()
    cfg = ModelConfig(image_size=32, g_width=8, g_depth=3)
    service = GeneratorService(hub.generator_link(), GeneratorTrainer(cfg, TrainConfig()),
                               ServiceConfig(out=tmp_path, max_bad_messages=3))
    link = hub.node_link("pest")
    service.handle("pest", P.make(P.Kind.HELLO, "pest", meta={"role": "node", "dataset_size": 1}))
    assert link.recv(1).kind == P.Kind.WELCOME
    bad = np.zeros((1, 8, 8), np.uint8)  # the wrong size
    reasons = []
    for _ in range(3):
        service.handle("pest", P.make(P.Kind.FAKE_REQUEST, "pest", tensors={"masks": bad}))
        reasons.append(link.recv(1).meta["reason"])
    assert "further messages are ignored" in reasons[-1] and "ignored" not in reasons[0]
    service.handle("pest", P.make(P.Kind.FAKE_REQUEST, "pest", tensors={"masks": np.ones((1, 32, 32), np.uint8)}))
    assert link.recv(0.2) is None and service.counters["ignored_banned"] == 1  # even valid ones now
