"""--lambda-colour: the fakes' per-class colour mean and spread against the node's whole dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.feedback_losses import class_colour_loss, class_colour_stats, class_labels


def test_colour_stats_are_each_classs_mean_and_spread_over_the_dataset() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, :2] = 1  # top half: buildings
    images[0, :2] = (255, 0, 0)  # red roofs in one image...
    images[1, :2] = (255, 0, 255)  # ... magenta in the other
    images[:, 2:] = (127, 127, 127)  # grey ground (127 -> -0.0039 in [-1, 1])
    stats = class_colour_stats(images, masks, 2).numpy()
    ground, roof = stats[0], stats[1]
    assert np.allclose(roof[0], [1.0, -1.0, 0.0]) and np.allclose(roof[1], [0.0, 0.0, 1.0])  # blue: -1 and +1
    assert np.allclose(ground[0], 127 / 127.5 - 1) and np.allclose(ground[1], 0.0, atol=1e-6)
    empty = class_colour_stats(images, np.zeros_like(masks), 2).numpy()
    assert np.isnan(empty[1]).all()  # no building pixel: no figure, and no loss term for that class


def test_colour_loss_is_zero_on_matching_fakes_and_its_gradient_ignores_everything_but_the_fakes() -> None:
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :4] = 1
    fake = torch.zeros(2, 3, 8, 8)
    fake[:, :, :4] = torch.tensor([0.5, -0.5, 0.0])[:, None, None]
    stats = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]])
    assert float(class_colour_loss(fake, labels, stats)) == pytest.approx(0.0, abs=1e-3)
    magenta = fake.clone()
    magenta[:, :, :4] = torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    magenta.requires_grad_(True)
    loss = class_colour_loss(magenta, labels, stats)
    assert float(loss.detach()) == pytest.approx((0.25 + 0.25 + 1.0) / 2, abs=1e-3)  # the roof's, over 2 classes
    (grad,) = torch.autograd.grad(loss, magenta)
    roof = grad[:, :, :4]
    assert torch.isfinite(grad).all()
    assert torch.allclose(roof, roof[:1, :, :1, :1].expand_as(roof))  # one value per channel: no pixel's own


def test_a_node_with_lambda_colour_sends_its_term_and_needs_its_dataset_figures_first() -> None:
    torch.manual_seed(0)
    model = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8)
    reals, masks = make_scenes(range(4), 32)
    fakes = np.ascontiguousarray(np.transpose(255 - reals, (0, 3, 1, 2)))  # wire layout, wrong colours
    disc = DiscriminatorTrainer(model, FeedbackConfig(FeedbackMode.ADVERSARIAL, lambda_colour=10.0), seed=0)
    with pytest.raises(RuntimeError, match="set_colour_stats"):
        disc.score(masks, reals, fakes)
    disc.set_colour_stats(reals, masks)
    scored = disc.score(masks, reals, fakes)
    assert scored.losses["g_colour"] > 0.1
    assert scored.losses["g_total"] == pytest.approx(scored.losses["g_adv"] + 10.0 * scored.losses["g_colour"],
                                                     rel=1e-5)
    plain = DiscriminatorTrainer(model, FeedbackConfig(FeedbackMode.ADVERSARIAL), seed=0)
    plain.set_colour_stats(reals, masks)  # the term is off: no pass over the data, nothing kept
    assert plain.colour_stats is None
    assert "g_colour" not in plain.score(masks, reals, fakes).losses
    with pytest.raises(ValueError):
        FeedbackConfig(lambda_colour=-1.0)


def test_the_experiment_gives_both_gans_the_colour_term_and_can_skip_the_department_models(tmp_path: Path) -> None:
    from dgan.experiment import ExperimentConfig, run_experiment
    from dgan.experiment_splits import cache_key, make_splits
    from dgan.segment import SegConfig

    cfg = ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=4, g_width=8, d_width=8, nodes=2,
                           seg=SegConfig(width=8, depth=3, steps=10, eval_every=10), seeds=1, samples_per_mask=1,
                           scenes=24, quick=True, partition="iid", threads=1, lambda_colour=5.0, local=())
    results = run_experiment(cfg)
    assert set(results["methods"]) == {"real_all", "real_partial", "central_gan", "central_gan_last", "dgan",
                                       "dgan_last"}  # no dgan_local
    nodes = json.loads((tmp_path / "exp" / "dgan_async_adversarial_d2_seed0" / "run.json").read_text())["nodes"]
    applied = [n["losses"] for n in nodes.values() if n["losses"]]  # a node may get no feedback in 4 steps
    assert applied and all("g_colour" in losses for losses in applied)  # the node processes sent the term
    splits = make_splits(cfg)
    plain = ExperimentConfig(**{**cfg.__dict__, "lambda_colour": 0.0})
    assert cache_key(cfg, splits, "central_gan", "adversarial") != cache_key(plain, splits, "central_gan",
                                                                             "adversarial")


@pytest.mark.parametrize(("classes", "scale"), [(2, 255), (2, 1), (3, 1)])
def test_a_whole_dataset_as_one_batch_matches_its_own_figures_however_its_masks_are_coded(classes: int,
                                                                                           scale: int) -> None:
    """The figures and the loss must label pixels alike: binary masks as 0/1 or 0/255, class ids beyond."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    masks = (rng.integers(0, classes, (3, 8, 8)) * scale).astype(np.uint8)
    stats = class_colour_stats(images, masks, classes)
    fakes = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = class_labels(torch.from_numpy(masks), classes)
    assert float(class_colour_loss(fakes, labels, stats)) == pytest.approx(0.0, abs=1e-6)
    assert float(class_colour_loss(fakes.flip(0), labels, stats)) > 1e-3  # the same pixels under other labels


def test_a_bad_colour_weight_fails_the_experiment_at_once(tmp_path: Path) -> None:
    from dgan.experiment import ExperimentConfig, ExperimentSetupError

    for bad in (-1.0, float("nan")):
        with pytest.raises(ExperimentSetupError, match="feedback adversarial"):
            ExperimentConfig(out=tmp_path, lambda_colour=bad)
