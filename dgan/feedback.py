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
* ``--lambda-colour`` (any mode): plus how far the fakes' per-class colour mean and spread lie from
  those of the node's whole dataset.  What its gradient adds is those dataset-wide figures, 6 per class
  (close to one image's own on a node with very few images); it is there for buildings drawn in colours
  no real roof has.
* ``semantic``: ``adversarial`` plus a semantic-consistency term (CyCADA, Hoffman et al. 2018): the
  class-weighted cross-entropy of the fakes against their own masks under a segmenter that the node
  trains on its real pairs only (never on fakes).  Label alignment again comes from a model of the
  node's data, not from a paired real image.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any


class FeedbackMode(str, enum.Enum):
    L1 = "l1"
    ADVERSARIAL = "adversarial"
    SEGMENTATION = "segmentation"
    SEMANTIC = "semantic"


# The non-leaking mode with the best validation IoU at the default budget (128 px, 800 batches; 2 GAN seeds on
# each of two splits, docs/results/privacy.md, session 13): tile 8 adversarial 0.223 against segmentation's 0.190
# and semantic's 0.041; tile 5 0.272 against 0.182 and 0.044.  Chosen on validation, not test.  semantic led at
# 64 px and 300 batches; with 800 its generator fits the node's segmenter (label_iou 0.55-0.62, the highest of any
# mode; buildings drawn as magenta blobs) and its sets train segmenters that find almost nothing in real images.
DEFAULT_MODE = FeedbackMode.ADVERSARIAL
LEAKING_MODES = frozenset({FeedbackMode.L1})
MAX_D_STEPS = 16  # a node's D steps per feedback: enough for 16 nodes in turn
# A node's D steps per feedback where its operator does not choose (the PatchGAN modes; segmentation takes one).
# Measured on Dubai with 4 nodes, 2 GAN seeds per split (docs/results/update-rule.md, sessions 30-32): with 2,
# DGAN on `iid` tile 8 went from 0.47x and 0.57x the central GAN's test IoU to 0.87x and 0.99x, and on `group`
# (tiles 8 and 5) it was level with one step (validation IoU -0.016 on average); with 4, one seed of each sank.
DEFAULT_D_STEPS = 2


def default_d_steps(mode: FeedbackMode | str, sync: bool = False) -> int:
    """:data:`DEFAULT_D_STEPS`; 1 in segmentation mode (its LabelMix pairs each real batch with its fakes), and 1
    in sync rounds, which step every node's D once per generator step already (a node started alone with `dgan
    node` does not know the generator's pace: give it `--d-steps 1` for a sync run)."""
    return 1 if sync or FeedbackMode(mode) == FeedbackMode.SEGMENTATION else DEFAULT_D_STEPS


L1_WARNING = ("feedback mode 'l1' (the paper's recipe): each gradient carries sign(fake - real) for every pixel "
              "of this node's private images. A curious generator reconstructs them from what it receives "
              "(see `dgan bench privacy` and docs/security.md). Use --feedback adversarial, semantic or "
              "segmentation to keep them private.")


@dataclass(frozen=True)
class FeedbackConfig:
    """The node's own loss recipe and D optimiser: nothing here comes from the generator."""

    mode: FeedbackMode = DEFAULT_MODE
    lambda_l1: float = 100.0  # l1 mode only
    label_mix: float = 0.0  # segmentation mode: LabelMix consistency weight (OASIS uses 10)
    lambda_semantic: float = 20.0  # semantic: the segmenter term's weight (tile 8 val IoU: 1 -> 0.088, 20 -> 0.232)
    lr: float = 2e-4  # the discriminator's Adam (OASIS: 4e-4)
    beta1: float = 0.5  # (OASIS: 0.0)
    diffaugment: bool = False  # PatchGAN modes: D sees DiffAugment'ed (color, translation, cutout) pairs
    warmup: int = 100  # segmentation/semantic: segmenter steps on the node's own real pairs before its first feedback
    lambda_colour: float = 0.0  # any mode: the fakes' per-class colour mean and spread against the dataset's
    d_steps: int = 1  # PatchGAN modes: D steps per feedback (fresh real batches, then the request's), see score

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", FeedbackMode(self.mode))
        values = (self.lambda_l1, self.label_mix, self.lambda_semantic, self.lr, self.beta1, self.lambda_colour)
        weights = (self.lambda_l1, self.label_mix, self.lambda_semantic, self.lambda_colour)
        if not all(math.isfinite(v) for v in values) or min(weights) < 0 or self.lr <= 0 \
                or not 0 <= self.beta1 < 1 or self.warmup < 0:
            raise ValueError(f"invalid feedback settings {self}")
        if isinstance(self.d_steps, bool) or not isinstance(self.d_steps, int) or not 1 <= self.d_steps <= MAX_D_STEPS:
            raise ValueError(f"d_steps must be a whole number from 1 to {MAX_D_STEPS}, got {self.d_steps!r}")
        if self.diffaugment and self.mode == FeedbackMode.SEGMENTATION:
            raise ValueError("diffaugment works on the PatchGAN modes (l1, adversarial, semantic), not on "
                             "segmentation, whose per-pixel labels would have to move with the image")
        if self.d_steps > 1 and self.mode == FeedbackMode.SEGMENTATION:
            raise ValueError("d_steps > 1 works on the PatchGAN modes (l1, adversarial, semantic), not on "
                             "segmentation, whose LabelMix pairs each real batch with its own fakes")

    @property
    def leaks(self) -> bool:
        return self.mode in LEAKING_MODES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mode": self.mode.value}
