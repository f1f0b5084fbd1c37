"""int8 gradients on the wire: half float16's bytes, unbiased, and malformed pairs are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dgan import grad_codec
from dgan import protocol as P
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_int8_quantisation_is_unbiased_and_within_one_step_per_sample() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    g[1] *= 1e-6  # a sample with tiny gradients keeps its own resolution next to large ones
    g[2] = 0.0
    draws = []
    for _ in range(400):
        q, scales = grad_codec.quantize_int8(g, rng)
        assert q.dtype == np.int8 and scales.dtype == np.float32 and np.abs(q).max() <= grad_codec.INT8_LEVELS
        back = grad_codec.decode(q, scales)
        assert (np.abs(back - g) <= scales[:, None, None, None] * (1 + 1e-5)).all()
        draws.append(back)
    assert not np.any(draws[-1][2])  # an all-zero sample stays exactly zero
    mean = np.mean(draws, axis=0)
    for i in (0, 1):  # the mean of many draws converges on g: stochastic rounding adds no bias
        step = float(scales[i])
        assert np.abs(mean[i] - g[i]).max() < 0.15 * step, i
    rel = np.linalg.norm(draws[0][1] - g[1]) / np.linalg.norm(g[1])
    assert rel < 0.05  # the tiny sample is quantised on its own scale, not the batch's


@pytest.mark.parametrize(("grad", "scales", "reason"), [
    (np.zeros((2, 3, 4, 4), np.int8), None, "needs its per-sample"),
    (np.zeros((2, 3, 4, 4), np.int8), np.ones(3, np.float32), "shape \\[2\\]"),
    (np.zeros((2, 3, 4, 4), np.int8), np.ones(2, np.float16), "must be float32"),
    (np.zeros((2, 3, 4, 4), np.int8), np.array([1.0, np.nan], np.float32), "finite and non-negative"),
    (np.zeros((2, 3, 4, 4), np.int8), np.array([1.0, -1.0], np.float32), "finite and non-negative"),
    (np.zeros((2, 3, 4, 4), np.float16), np.ones(2, np.float32), "only with an int8"),
])
def test_a_malformed_int8_pair_is_refused_with_its_reason(grad: np.ndarray, scales: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        grad_codec.decode(grad, scales)


def test_int8_feedback_halves_float16_bytes_and_steers_the_generator_like_float32() -> None:
    reals, masks = make_scenes(range(4), 32)
    gen = GeneratorTrainer(MODEL, TrainConfig(seed=3, fake_dtype="float32"))
    node = DiscriminatorTrainer(MODEL, FeedbackConfig(FeedbackMode.L1, lambda_l1=100.0), seed=5)
    fakes = gen.generate("n0", 1, masks, request_id=1)
    exact = node.score(masks, reals, fakes, "float32")  # three nodes of one seed: the same D step, three codecs
    half = DiscriminatorTrainer(MODEL, FeedbackConfig(FeedbackMode.L1, lambda_l1=100.0), seed=5)
    eight = DiscriminatorTrainer(MODEL, FeedbackConfig(FeedbackMode.L1, lambda_l1=100.0), seed=5)
    f16 = half.score(masks, reals, fakes, "float16")
    i8 = eight.score(masks, reals, fakes, "int8")
    wire16 = sum(t.nbytes for t in f16.tensors().values())
    wire8 = sum(t.nbytes for t in i8.tensors().values())
    assert wire8 <= wire16 / 2 + 4 * len(masks) and set(i8.tensors()) == {"grad", "grad_scales"}
    assert wire8 == grad_codec.bytes_per_sample("int8", fakes.shape[1:]) * len(masks)
    g32 = exact.grad / exact.grad_scale
    g8 = grad_codec.decode(i8.grad, i8.grad_scales) / i8.grad_scale
    cos = float((g32 * g8).sum() / (np.linalg.norm(g32) * np.linalg.norm(g8)))
    assert cos > 0.99, cos
    # The generator takes the int8 pair and backpropagates it like any other gradient.
    outcome, staleness, reason = gen.apply_feedback("n0", 1, i8.grad, i8.grad_scale, 1.0, i8.grad_scales)
    assert (outcome, staleness, reason) == (Outcome.APPLIED, 0, "")
    before = [p.detach().clone() for p in gen.G.parameters()]
    assert gen.update()
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.G.parameters(), strict=True))
    # Without its scales the same gradient is refused, and the request is released (not held forever).
    gen.generate("n0", 2, masks, request_id=2)
    outcome, _, reason = gen.apply_feedback("n0", 2, i8.grad, i8.grad_scale)
    assert outcome == Outcome.REJECTED and "grad_scales" in reason and 2 not in gen.inflight


def test_an_int8_node_trains_the_generator_end_to_end_and_counts_its_scales_as_wire_bytes(
        serve_one_node: Any) -> None:
    images, masks = make_scenes(range(6), 32)
    service, node = serve_one_node(MODEL, 4, "n0", images, masks, grad_dtype="int8", pipeline=1)
    assert service.trainer.step == 4
    assert node.stats.batches >= 4 and node.stats.errors.total() == 0
    per_batch = grad_codec.bytes_per_sample("int8", (3, 32, 32)) * 2
    assert node.stats.wire_bytes >= node.stats.batches * per_batch  # gradients with their scales (+ requests)
    assert not any(n.counts["rejected"] for n in service.nodes.values())


def test_a_hostile_int8_feedback_gets_an_error_and_the_generator_keeps_serving(tmp_path: Path) -> None:
    from dgan.transport.inproc import InProcessHub
    from nodes.generator_service import GeneratorService, ServiceConfig

    hub = InProcessHub()
    trainer = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32"))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path))
    link = hub.node_link("n")
    service.handle("n", P.make(P.Kind.HELLO, "n", meta={"role": "node", "dataset_size": 2}))
    assert link.recv(1).kind == P.Kind.WELCOME
    masks = np.ones((2, 32, 32), np.uint8)
    for scales in (np.full(2, np.inf, np.float32), None):  # infinite scales, then none at all
        service.handle("n", P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": masks}))
        reply = link.recv(1)
        assert reply.kind == P.Kind.FAKES
        tensors = {"grad": np.ones(reply.tensors["fakes"].shape, np.int8)}
        if scales is not None:
            tensors["grad_scales"] = scales
        service.handle("n", P.make(P.Kind.FEEDBACK, "n", run_id=reply.run_id, reply_to=reply.msg_id,
                                   step=reply.step, meta={"losses": {}, "grad_scale": 1.0}, tensors=tensors))
        err = link.recv(1)
        assert err.kind == P.Kind.ERROR and err.meta["code"] == P.ErrorCode.REJECTED
        assert "grad_scales" in err.meta["reason"] and not trainer.inflight and trainer.pending == 0
    service.handle("n", P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": masks}))
    assert link.recv(1).kind == P.Kind.FAKES  # still served
    assert service.nodes["n"].counts["rejected"] == 2


def test_wire_bench_reports_bytes_and_fidelity_of_each_encoding_on_real_gradients() -> None:
    from benchmarks.wire import measure_mode

    rows = {r["grad_dtype"]: r for r in measure_mode("semantic", MODEL, batches=2, batch=2)}
    assert set(rows) == {"float32", "float16", "int8"}
    assert rows["int8"]["bytes_per_sample"] < 0.52 * rows["float16"]["bytes_per_sample"]
    assert rows["float32"]["rel_l2_error"] == 0.0
    assert 0 < rows["float16"]["rel_l2_error"] < rows["int8"]["rel_l2_error"] < 0.1
    assert rows["int8"]["cosine"] > 0.99 and rows["int8"]["sign_agreement"] > 0.9


def test_a_sample_holding_nan_is_sent_with_a_nan_scale_and_refused_not_turned_into_noise() -> None:
    g = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    g[0, 0, 0, 0] = np.nan
    q, scales = grad_codec.quantize_int8(g, np.random.default_rng(0))
    assert np.isnan(scales[0]) and np.isfinite(scales[1])
    with pytest.raises(ValueError, match="finite and non-negative"):
        grad_codec.decode(q, scales)
