"""What a node's feedback may reveal: the modes an operator chooses, and their losses.

The node's operator picks the mode (``dgan node --feedback``); the generator
cannot change it.  The modes differ in what the gradient sent back can carry:

* ``l1``: the paper's pix2pix recipe, ``adv + lambda * L1(fake, real)``.  Its
  gradient is dominated by ``lambda/N * sign(fake - real)``: the sign of every
  pixel's error against the node's private image (``dgan bench privacy``).
* ``adversarial``: the PatchGAN's adversarial loss alone; no pixel loss
  against a real image ever reaches the wire.
* ``segmentation``: the OASIS discriminator (Schönfeld et al., ICLR 2021): a
  per-pixel segmenter of the image alone with (classes + 1) outputs.  The
  generator's loss is a class-balanced cross-entropy of the fakes against
  their own mask classes: label alignment without any paired real image.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F


class FeedbackMode(str, enum.Enum):
    L1 = "l1"
    ADVERSARIAL = "adversarial"
    SEGMENTATION = "segmentation"


# The non-leaking mode with the best validation IoU over 2 GAN seeds (docs/results/privacy.md): adversarial
# 0.172/0.166, segmentation 0.249/0.013 (one seed collapsed).
DEFAULT_MODE = FeedbackMode.ADVERSARIAL
LEAKING_MODES = frozenset({FeedbackMode.L1})

L1_WARNING = ("feedback mode 'l1' (the paper's recipe): each gradient carries sign(fake - real) for every pixel "
              "of this node's private images. A curious generator reconstructs them from what it receives "
              "(see `dgan bench privacy` and docs/security.md). Use --feedback segmentation or adversarial to "
              "keep them private.")


@dataclass(frozen=True)
class FeedbackConfig:
    """The node's own loss recipe and D optimiser: nothing here comes from the generator."""

    mode: FeedbackMode = DEFAULT_MODE
    lambda_l1: float = 100.0  # l1 mode only
    label_mix: float = 0.0  # segmentation mode: LabelMix consistency weight (OASIS uses 10)
    lr: float = 2e-4  # the discriminator's Adam (OASIS: 4e-4)
    beta1: float = 0.5  # (OASIS: 0.0)
    warmup: int = 100  # segmentation mode: D steps on the node's own real pairs before its first feedback

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", FeedbackMode(self.mode))
        values = (self.lambda_l1, self.label_mix, self.lr, self.beta1)
        if not all(math.isfinite(v) for v in values) or self.lambda_l1 < 0 or self.label_mix < 0 or self.lr <= 0 \
                or not 0 <= self.beta1 < 1 or self.warmup < 0:
            raise ValueError(f"invalid feedback settings {self}")

    @property
    def leaks(self) -> bool:
        return self.mode in LEAKING_MODES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mode": self.mode.value}


def class_labels(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, H, W) of class ids -> int64 classes in [0, num_classes)."""
    if num_classes == 2:
        return (masks > 0).long()
    return masks.long().clamp(0, num_classes - 1)


def class_balanced_ce(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, real: bool) -> torch.Tensor:
    """OASIS's loss: per-pixel cross-entropy over (fake, class 1..C), each class weighted by its rarity.

    ``real=True`` targets each pixel's own class (shifted by one: index 0 is "fake"); ``real=False``
    targets "fake" everywhere, with the same class-balancing weights.
    """
    counts = torch.bincount(labels.flatten(), minlength=num_classes).float()
    present = (counts > 0).sum().clamp_min(1)
    coeff = labels.numel() / (present * counts.clamp_min(1.0))
    weights = coeff[labels]
    target = labels + 1 if real else torch.zeros_like(labels)
    return (F.cross_entropy(logits, target, reduction="none") * weights).mean()


def label_mix(labels: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, num_classes: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OASIS's LabelMix: each class region of each image comes from the real or the fake image at random.

    Returns the mixed images and the (B, 1, H, W) map that is 1 where the real image was taken.
    """
    pick = torch.randint(0, 2, (labels.shape[0], num_classes), generator=generator, device=labels.device)
    mix = torch.gather(pick, 1, labels.flatten(1)).view_as(labels).unsqueeze(1).to(real.dtype)
    return mix * real + (1 - mix) * fake, mix
