"""The demo's last stage: segment held-out built-in scenes with a U-Net trained on synthetic images only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgan.data.loaders import load_pairs_folder
from dgan.data.scenes import make_scenes
from dgan.run import HELDOUT_SEED_BASE
from dgan.segment import SegConfig, metrics, predict, prediction_grid, train_segmenter

VAL_SEED_BASE = 40_000_000  # validation scenes: neither a node's nor the test's


def segment_synthetic(run_dir: Path, size: int = 128, steps: int = 300, test_scenes: int = 64,
                      threads: int = 2) -> dict[str, Any]:
    """Train on run_dir/synthetic, pick the model on validation scenes, test on held-out scenes once. Returns the
    test metrics and ``all_building_iou``, what predicting "building" everywhere scores there."""
    torch.set_num_threads(threads)
    synthetic = load_pairs_folder(run_dir / "synthetic", size)
    val = make_scenes(range(VAL_SEED_BASE, VAL_SEED_BASE + 32), size)
    test_images, test_masks = make_scenes(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + test_scenes), size)
    model, info = train_segmenter(synthetic.images, synthetic.masks, SegConfig(steps=steps, eval_every=50), val=val)
    probs = predict(model, test_images)
    result = {**metrics(probs > 0.5, test_masks), "train_seconds": info["train_seconds"],
              "train_pairs": len(synthetic), "test_scenes": test_scenes}
    prediction_grid(test_images, test_masks, (probs > 0.5).astype(np.uint8), run_dir / "predictions" / "dgan.png")
    baseline = metrics(np.ones_like(test_masks, dtype=bool), test_masks)  # predict "building" everywhere
    (run_dir / "results.json").write_text(json.dumps({
        "dataset": "built-in scenes", "partition": "iid", "resolution": size,
        "methods": {"dgan": result, "all_building_baseline": baseline},
        "note": "segmentation trained on synthetic images only, tested on held-out scenes",
    }, indent=2))
    return {**result, "all_building_iou": baseline["iou"]}
