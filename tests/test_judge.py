"""The node's label judge: a local segmenter's IoU on the fakes is a real measure of label alignment."""

from __future__ import annotations

import numpy as np
import torch

from dgan.data.scenes import make_scenes
from dgan.training.judge import LabelJudge


def _wire(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))  # uint8 (B, 3, H, W), as fakes travel


def test_judge_scores_aligned_images_high_and_blank_or_mismatched_ones_low() -> None:
    torch.set_num_threads(1)
    ims, ms = make_scenes(range(32), 32)
    judge = LabelJudge(seed=0, lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.integers(0, len(ims), 8)
        judge.train_step(ims[idx], ms[idx])
    test_ims, test_ms = make_scenes(range(500, 516), 32)
    aligned = judge.label_iou(_wire(test_ims), test_ms)
    grey = judge.label_iou(_wire(np.full_like(test_ims, 128)), test_ms)
    shuffled = judge.label_iou(_wire(test_ims), test_ms[::-1].copy())  # images drawn for other masks
    assert aligned > 0.3, aligned
    assert grey < 0.1 and shuffled < aligned / 2, (grey, shuffled, aligned)
    assert judge.steps == 150
