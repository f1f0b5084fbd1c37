"""The losses behind the feedback modes (torch): class-weighted cross-entropies, LabelMix, class labels.

Kept apart from :mod:`dgan.feedback` so that the modes and their config, which
every command line imports, do not load torch (the broker never needs it).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def class_labels(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, H, W) of class ids -> int64 classes in [0, num_classes)."""
    if num_classes == 2:
        return (masks > 0).long()
    return masks.long().clamp(0, num_classes - 1)


def _class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-pixel weight of each pixel's class: rare classes count as much as common ones."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).float()
    present = (counts > 0).sum().clamp_min(1)
    coeff = labels.numel() / (present * counts.clamp_min(1.0))
    return coeff[labels]


def class_balanced_ce(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, real: bool) -> torch.Tensor:
    """OASIS's loss: per-pixel cross-entropy over (fake, class 1..C), each class weighted by its rarity.

    ``real=True`` targets each pixel's own class (shifted by one: index 0 is "fake"); ``real=False``
    targets "fake" everywhere, with the same class-balancing weights.
    """
    target = labels + 1 if real else torch.zeros_like(labels)
    return (F.cross_entropy(logits, target, reduction="none") * _class_weights(labels, num_classes)).mean()


def class_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-pixel cross-entropy over classes 0..C-1 with OASIS's class-balancing weights (no "fake" class)."""
    return (F.cross_entropy(logits, labels, reduction="none") * _class_weights(labels, num_classes)).mean()


def label_mix(labels: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, num_classes: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OASIS's LabelMix: each class region of each image comes from the real or the fake image at random.

    Returns the mixed images and the (B, 1, H, W) map that is 1 where the real image was taken.
    """
    pick = torch.randint(0, 2, (labels.shape[0], num_classes), generator=generator, device=labels.device)
    mix = torch.gather(pick, 1, labels.flatten(1)).view_as(labels).unsqueeze(1).to(real.dtype)
    return mix * real + (1 - mix) * fake, mix
