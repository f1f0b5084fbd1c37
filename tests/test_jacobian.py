"""TrainConfig.jacobian "current": a stale feedback goes through G's weights of now (delay compensation)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig
from dgan.networks import ModelConfig, masks_to_input
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig
from tests.conftest import answer_late

CFG = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def _trainer(jacobian: str) -> GeneratorTrainer:
    return GeneratorTrainer(CFG, TrainConfig(fake_dtype="float32", max_staleness=8, jacobian=jacobian, seed=2))


def test_current_jacobian_makes_the_same_fakes_and_keeps_no_graph() -> None:
    _, masks = make_scenes(range(2), 32)
    made, current = _trainer("made"), _trainer("current")
    a = made.generate("n0", 1, masks, request_id=1)
    b = current.generate("n0", 1, masks, request_id=1)
    np.testing.assert_array_equal(a, b)
    assert made.inflight[1].fakes.requires_grad
    assert not current.inflight[1].fakes.requires_grad  # no graph held while the request is in flight


def test_fresh_feedback_steps_alike_under_both_jacobians() -> None:
    """Staleness 0: the weights that made the fakes are the current ones, so the two rules take the same step."""
    reals, masks = make_scenes(range(2), 32)
    node = DiscriminatorTrainer(CFG, FeedbackConfig(warmup=0), seed=1)
    fakes = _trainer("made").generate("n0", 1, masks, request_id=1)
    scored = node.score(masks, reals, fakes, "float32")
    stepped = []
    for jacobian in ("made", "current"):
        gen = _trainer(jacobian)
        gen.generate("n0", 1, masks, request_id=1)
        assert gen.apply_feedback("n0", 1, scored.grad, scored.grad_scale)[:2] == (Outcome.APPLIED, 0)
        assert gen.update()
        stepped.append(gen.G)
    for (name, a), b in zip(stepped[0].named_parameters(), stepped[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("staleness", [1, 3])
def test_stale_feedback_goes_through_the_current_weights(staleness: int) -> None:
    """By hand: the node's gradient through θ_{k+s} on the same masks and dropout draw, then Adam from θ_{k+s}."""
    reals, masks = make_scenes(range(2), 32)
    gen = _trainer("current")
    node = DiscriminatorTrainer(CFG, FeedbackConfig(warmup=0), seed=1)
    g_then = copy.deepcopy(gen.G)
    _, late = answer_late(gen, node, masks, reals, staleness)
    grad_out = torch.from_numpy(late.grad) / late.grad_scale
    x = masks_to_input(torch.from_numpy(masks), CFG.num_classes)

    def grads(g: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gen.request_seed("n0", 100))
            return torch.autograd.grad(g(x), list(g.parameters()), grad_out)

    g_now = copy.deepcopy(gen.G)
    grad_now, grad_then = grads(g_now), grads(g_then)
    assert max(float((a - b).abs().max()) for a, b in zip(grad_then, grad_now, strict=True)) > 1e-6  # they differ

    opt_ref = torch.optim.Adam(g_now.parameters(), lr=gen.cfg.lr, betas=(gen.cfg.beta1, 0.999))
    opt_ref.load_state_dict(copy.deepcopy(gen.opt.state_dict()))
    for p, g in zip(g_now.parameters(), grad_now, strict=True):
        p.grad = g.clone()
    opt_ref.step()
    assert gen.apply_feedback("n0", 100, late.grad, late.grad_scale)[:2] == (Outcome.APPLIED, staleness)
    assert gen.update()
    for (name, p), p_ref in zip(gen.G.named_parameters(), g_now.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-7, msg=name)


def test_the_replay_leaves_the_global_rng_as_it_was() -> None:
    reals, masks = make_scenes(range(2), 32)
    gen = _trainer("current")
    node = DiscriminatorTrainer(CFG, FeedbackConfig(warmup=0), seed=1)
    scored = node.score(masks, reals, gen.generate("n0", 1, masks, request_id=1), "float32")
    torch.manual_seed(7)
    before = torch.get_rng_state()
    assert gen.apply_feedback("n0", 1, scored.grad, scored.grad_scale)[0] == Outcome.APPLIED
    assert torch.equal(torch.get_rng_state(), before)


def test_unknown_jacobian_and_a_compiled_replay_are_refused() -> None:
    with pytest.raises(ValueError, match="jacobian"):
        TrainConfig(jacobian="later")
    with pytest.raises(ValueError, match="compile"):  # a compiled G need not redraw the same dropout
        TrainConfig(jacobian="current", compile=True)
