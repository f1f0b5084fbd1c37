"""The losses behind the feedback modes (torch): class-weighted cross-entropies, LabelMix, class labels.

Kept apart from :mod:`dgan.feedback` so that the modes and their config, which
every command line imports, do not load torch (the broker never needs it).
"""

from __future__ import annotations

import numpy as np
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


def class_colour_stats(images: np.ndarray, masks: np.ndarray, num_classes: int) -> torch.Tensor:
    """(classes, 2, 3): each class's per-channel mean and standard deviation over a whole dataset, in [-1, 1].

    uint8 images (N, H, W, 3) and masks (N, H, W), labelled by :func:`class_labels`; a class with no
    pixel gets NaNs (and no loss term).  One image at a time: a node's dataset need not fit twice in memory."""
    count = np.zeros((num_classes, 1))
    total, squares = np.zeros((num_classes, 3)), np.zeros((num_classes, 3))
    for image, mask in zip(images, masks, strict=True):
        labels = class_labels(torch.from_numpy(np.ascontiguousarray(mask)), num_classes).reshape(-1).numpy()
        px = np.asarray(image, np.float64).reshape(-1, 3) / 127.5 - 1.0
        count[:, 0] += np.bincount(labels, minlength=num_classes)
        for ch in range(3):
            total[:, ch] += np.bincount(labels, px[:, ch], num_classes)
            squares[:, ch] += np.bincount(labels, px[:, ch] ** 2, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return torch.from_numpy(np.stack([mean, std], axis=1)).float()


def class_colour_loss(fake: torch.Tensor, labels: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Squared distance of each class's colour mean and spread in the fakes (B, 3, H, W) from ``stats``
    (:func:`class_colour_stats`), averaged over the classes present in ``labels`` (B, H, W).

    Its gradient depends on the fakes and on these dataset-wide figures only, never on one real image."""
    terms = []
    for c in range(stats.shape[0]):
        where = labels == c
        if int(where.sum()) < 2 or bool(torch.isnan(stats[c]).any()):
            continue
        px = fake.permute(0, 2, 3, 1)[where]  # (pixels of class c, 3)
        mean = px.mean(0)
        std = (px.var(0, unbiased=False) + 1e-8).sqrt()  # finite gradient on a flat class too
        terms.append(((mean - stats[c, 0]) ** 2).sum() + ((std - stats[c, 1]) ** 2).sum())
    return torch.stack(terms).mean() if terms else fake.sum() * 0.0
