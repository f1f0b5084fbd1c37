"""One distributed step with staleness 0 equals one single-process pix2pix step."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import GANLoss, ModelConfig, images_to_tensor, masks_to_input
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig
from tests.conftest import answer_late

CFG = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)
L1 = FeedbackConfig(FeedbackMode.L1, lambda_l1=100.0)


def pix2pix_step(G: torch.nn.Module, D: torch.nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, masks: np.ndarray, reals: np.ndarray, dropout_seed: int) -> None:
    """The reference: pix2pix's optimize_parameters, in one process."""
    gan = GANLoss(CFG.gan_mode)
    m = masks_to_input(torch.from_numpy(masks), CFG.num_classes)
    real = images_to_tensor(torch.from_numpy(reals))
    torch.manual_seed(dropout_seed)
    fake = G(m)
    opt_d.zero_grad()
    loss_d = (gan(D(m, real), True) + gan(D(m, fake.detach()), False)) * 0.5
    loss_d.backward()
    opt_d.step()
    for p in D.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad()
    loss_g = gan(D(m, fake), True) + L1.lambda_l1 * torch.nn.functional.l1_loss(fake, real)
    loss_g.backward()
    opt_g.step()
    for p in D.parameters():
        p.requires_grad_(True)


@pytest.fixture
def reference_kernels() -> Iterator[None]:
    """PyTorch's own convolutions, not oneDNN's. On an Intel CPU with AMX (session 25), oneDNN's kernels made the
    two paths differ by more than rounding in 10 of 20 tries (5 at each of 1-4 threads: all 5 at 4, some at 1,
    none at 2 or 3), before session 25's change too: its kernel choice is not the same for the two graphs; Adam's
    first steps, about lr * sign(grad), turn a rounding difference on a small gradient into a fraction of lr. With
    PyTorch's kernels the two paths agree to 1e-6 in 20 of 20 tries. What this test pins is the algorithm, the
    gradient each path computes, not a library's kernels."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def test_distributed_step_equals_single_process_pix2pix_step(reference_kernels: None) -> None:
    reals, masks = make_scenes(range(4), 32)
    gen = GeneratorTrainer(CFG, TrainConfig(seed=3, fake_dtype="float32"))
    node = DiscriminatorTrainer(CFG, L1, seed=5)
    G_ref, D_ref = copy.deepcopy(gen.G), copy.deepcopy(node.D)
    opt_g = torch.optim.Adam(G_ref.parameters(), lr=gen.cfg.lr, betas=(gen.cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D_ref.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for key in (1, 2):  # two steps, so the second one also starts from equal optimizer states
        fakes = gen.generate("n0", key, masks, request_id=key)
        scored = node.score(masks, reals, fakes, grad_dtype="float32")
        outcome, staleness, _ = gen.apply_feedback("n0", key, scored.grad, scored.grad_scale)
        assert (outcome, staleness) == (Outcome.APPLIED, 0)
        assert gen.update()
        pix2pix_step(G_ref, D_ref, opt_g, opt_d, masks, reals, gen.request_seed("n0", key))
        for (name, p), p_ref in zip(gen.G.named_parameters(), G_ref.parameters(), strict=True):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=name)
        for p, p_ref in zip(node.D.parameters(), D_ref.parameters(), strict=True):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)
    # And the parameters really moved: the comparison is not of two untouched copies.
    fresh = GeneratorTrainer(CFG, TrainConfig(seed=3))
    assert any(not torch.equal(a, b) for a, b in zip(gen.G.parameters(), fresh.G.parameters(), strict=True))


def test_stale_feedback_beyond_the_bound_is_dropped_and_counted() -> None:
    reals, masks = make_scenes(range(2), 32)
    gen = GeneratorTrainer(CFG, TrainConfig(max_staleness=1, fake_dtype="float32"))
    node = DiscriminatorTrainer(CFG, L1)
    old = gen.generate("n0", 100, masks)
    for key in (1, 2):
        s = node.score(masks, reals, gen.generate("n0", key, masks))
        gen.apply_feedback("n0", key, s.grad, s.grad_scale)
        gen.update()
    s = node.score(masks, reals, old)
    outcome, staleness, _ = gen.apply_feedback("n0", 100, s.grad, s.grad_scale)
    assert outcome == Outcome.DROPPED_STALE and staleness == 2
    assert 100 not in gen.inflight


def test_bad_feedback_is_rejected_not_applied() -> None:
    _, masks = make_scenes(range(2), 32)
    gen = GeneratorTrainer(CFG, TrainConfig())
    before = [p.clone() for p in gen.G.parameters()]
    fakes = gen.generate("n0", 1, masks)
    assert gen.apply_feedback("n1", 1, np.zeros_like(fakes), 1.0)[0] == Outcome.UNKNOWN  # another node's request
    bad = np.zeros_like(fakes, dtype=np.float32)
    bad[0, 0, 0, 0] = np.nan
    assert gen.apply_feedback("n0", 1, bad, 1.0)[0] == Outcome.REJECTED
    fakes = gen.generate("n0", 2, masks)
    assert gen.apply_feedback("n0", 2, np.zeros((1, 3, 32, 32), np.float32), 1.0)[0] == Outcome.REJECTED
    assert not gen.update()
    assert all(torch.equal(a, b) for a, b in zip(before, gen.G.parameters(), strict=True))
    assert gen.inflight == {}


@pytest.mark.parametrize("staleness", [1, 3])
def test_stale_feedback_is_applied_through_the_snapshot_that_made_its_fakes(staleness: int) -> None:
    """Delayed-gradient SGD, by hand: grad through θ_k (the fakes' snapshot), Adam step from θ_{k+s}."""
    reals, masks = make_scenes(range(2), 32)
    gen = GeneratorTrainer(CFG, TrainConfig(fake_dtype="float32", max_staleness=8))
    node = DiscriminatorTrainer(CFG, FeedbackConfig(warmup=0), seed=1)
    g_then = copy.deepcopy(gen.G)
    old, late = answer_late(gen, node, masks, reals, staleness)
    grad_out = torch.from_numpy(late.grad) / late.grad_scale

    x = masks_to_input(torch.from_numpy(masks), CFG.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen.request_seed("n0", 100))
        fakes_then = g_then(x)
    np.testing.assert_array_equal(fakes_then.detach().numpy(), old)  # the snapshot made exactly these fakes
    grad_then = torch.autograd.grad(fakes_then, list(g_then.parameters()), grad_out)
    with torch.random.fork_rng(devices=[]):  # the same gradient through today's θ differs: the test can tell
        torch.manual_seed(gen.request_seed("n0", 100))
        g_now = copy.deepcopy(gen.G)
        grad_now = torch.autograd.grad(g_now(x), list(g_now.parameters()), grad_out)
    assert max(float((a - b).abs().max()) for a, b in zip(grad_then, grad_now, strict=True)) > 1e-6

    g_ref = copy.deepcopy(gen.G)
    opt_ref = torch.optim.Adam(g_ref.parameters(), lr=gen.cfg.lr, betas=(gen.cfg.beta1, 0.999))
    opt_ref.load_state_dict(copy.deepcopy(gen.opt.state_dict()))
    for p, g in zip(g_ref.parameters(), grad_then, strict=True):
        p.grad = g.clone()
    opt_ref.step()

    outcome, got, _ = gen.apply_feedback("n0", 100, late.grad, late.grad_scale)
    assert (outcome, got) == (Outcome.APPLIED, staleness)
    assert gen.update()
    for (name, p), p_ref in zip(gen.G.named_parameters(), g_ref.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-7, msg=name)
