"""The semantic feedback mode: label alignment from a segmenter of the node's own pairs, never from a fake."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.privacy import victim_data
from dgan.cli import app
from dgan.experiment import ExperimentConfig
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.feedback_losses import class_weighted_ce

TINY = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)
SEMANTIC = FeedbackConfig(FeedbackMode.SEMANTIC)


def test_the_semantic_segmenter_learns_from_real_pairs_only() -> None:
    images, masks, _ = victim_data(32, count=4, scenes=True)
    rng = np.random.default_rng(0)
    grey = np.zeros((4, 3, 32, 32), np.float32)
    noise = rng.uniform(-1, 1, grey.shape).astype(np.float32)
    a, b, fresh = (DiscriminatorTrainer(TINY, SEMANTIC, seed=3) for _ in range(3))
    for _ in range(2):
        a.score(masks, images, grey)
        b.score(masks, images, noise)
    assert a.task is not None and b.task is not None and fresh.task is not None
    pairs = list(zip(a.task.parameters(), b.task.parameters(), fresh.task.parameters(), strict=True))
    assert all(torch.equal(pa, pb) for pa, pb, _ in pairs), "the fakes changed the node's segmenter"
    assert any(not torch.equal(pa, pf) for pa, _, pf in pairs), "the segmenter did not learn from the real pairs"
    sent = a.score(masks, images, grey).losses
    assert set(sent) >= {"g_adv", "g_semantic", "g_total"} and "task_real" not in sent  # a real-image loss stays
    assert np.isfinite(a.task_loss)


def test_semantic_gradient_descends_the_node_segmenters_loss_on_the_fakes() -> None:
    images, masks, _ = victim_data(32, count=6, scenes=True)
    d = DiscriminatorTrainer(TINY, FeedbackConfig(FeedbackMode.SEMANTIC, lambda_semantic=20.0), seed=1)
    warm = [d.warm_up(masks, images) for _ in range(40)]
    assert d.warmup_steps == 100 and np.mean(warm[-5:]) < 0.8 * np.mean(warm[:5])
    labels = torch.from_numpy((masks > 0).astype(np.int64))
    assert d.task is not None
    task = copy.deepcopy(d.task)  # the weights the gradient comes from: score() steps the node's copy after it

    def semantic_loss(fakes: np.ndarray) -> float:
        task.eval()
        with torch.no_grad():
            return float(class_weighted_ce(task(torch.from_numpy(fakes)), labels, 2))

    fakes = np.zeros((6, 3, 32, 32), np.float32)
    before = semantic_loss(fakes)
    scored = d.score(masks, images, fakes)
    step = scored.grad / scored.grad_scale
    after = semantic_loss(np.clip(fakes - 0.5 * step / np.abs(step).max(), -1, 1))
    assert after < before, (before, after)


def test_semantic_mode_settings_are_validated_and_reach_the_experiments_nodes() -> None:
    with pytest.raises(ValueError):
        FeedbackConfig(FeedbackMode.SEMANTIC, lambda_semantic=-1.0)
    with pytest.raises(ValueError):
        FeedbackConfig(FeedbackMode.SEMANTIC, lambda_semantic=float("inf"))
    assert ExperimentConfig(out=Path("unused"), lambda_semantic=3.0).recipe("semantic").lambda_semantic == 3.0
    assert DiscriminatorTrainer(TINY, FeedbackConfig(FeedbackMode.ADVERSARIAL)).task is None
    res = CliRunner().invoke(app, ["node", "--name", "dept", "--feedback", "semantic", "--lambda-semantic", "-1",
                                   "--broker", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "invalid feedback settings" in res.output
