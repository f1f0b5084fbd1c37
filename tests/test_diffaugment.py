"""DiffAugment at the node: differentiable, and the mask moves with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.privacy import victim_data
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import ModelConfig
from dgan.training.diffaugment import diff_augment
from dgan.training.discriminator import DiscriminatorTrainer

TINY = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_translation_and_cutout_move_the_mask_with_the_image_and_colour_touches_the_image_only() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(6, 3, 32, 32) * 2 - 1
    mask = image[:, :1].clone()  # a mask that is a copy of channel 0: alignment is visible pixel by pixel
    m, im = diff_augment(mask, image, ("translation", "cutout"), generator=g)
    assert torch.equal(m[:, 0], im[:, 0]) and not torch.equal(im, image)
    assert (im == 0).float().mean() > 0.15  # cutout and the translation's zero fill
    m2, im2 = diff_augment(mask, image, ("color",), generator=g)
    assert torch.equal(m2, mask) and not torch.allclose(im2, image)


def test_diffaugment_lets_the_generators_gradient_through() -> None:
    image = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    _, out = diff_augment(torch.zeros(4, 1, 32, 32), image, generator=torch.Generator().manual_seed(1))
    out.square().sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0


def test_a_node_with_diffaugment_scores_fakes_and_sends_a_finite_gradient() -> None:
    images, masks, _ = victim_data(32, count=4, scenes=True)
    fakes = np.zeros((4, 3, 32, 32), np.float32)
    plain = DiscriminatorTrainer(TINY, FeedbackConfig(FeedbackMode.ADVERSARIAL), seed=2).score(masks, images, fakes)
    aug = DiscriminatorTrainer(TINY, FeedbackConfig(FeedbackMode.ADVERSARIAL, diffaugment=True), seed=2).score(
        masks, images, fakes)
    assert np.isfinite(aug.grad).all() and np.abs(aug.grad).sum() > 0
    assert aug.losses["d_real"] != plain.losses["d_real"]  # D saw augmented pairs
    with pytest.raises(ValueError, match="diffaugment"):  # accepted and ignored would be worse than refused
        FeedbackConfig(FeedbackMode.SEGMENTATION, diffaugment=True)
