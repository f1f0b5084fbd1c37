"""The demo's last stage: segment held-out built-in scenes with a U-Net trained on synthetic images only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgan.data.loaders import load_pairs_folder
from dgan.data.scenes import make_scenes
from dgan.run import HELDOUT_SEED_BASE
from dgan.segment import SegConfig, metrics, predict, prediction_grid, train_segmenter

VAL_SEED_BASE = 40_000_000  # validation scenes: neither a node's nor the test's
# segmenters tried on every demo's set, the best on validation kept: plain, and half the images recoloured, which
# rescues some sets whose buildings came out in colours of their own (docs/results/demo.md, session 35)
DEMO_RECOLOUR = (0.0, 0.5)


def recolour_shares(shares: Sequence[float]) -> list[float]:
    """The shares to train one segmenter each, checked (at least one, each in [0, 1], NaN refused) and without
    repeats (a share given twice would train the same model twice)."""
    if not shares or any(not 0 <= r <= 1 for r in shares):
        raise ValueError(f"recolour shares must be in [0, 1], at least one, got {list(shares)}")
    return list(dict.fromkeys(shares))


def segment_synthetic(run_dir: Path, size: int = 128, steps: int = 300, test_scenes: int = 64,
                      threads: int = 2, recolour: Sequence[float] = DEMO_RECOLOUR) -> dict[str, Any]:
    """Train on run_dir/synthetic, one segmenter per ``recolour`` share (SegConfig.recolour); keep the model with
    the best validation IoU over them and their steps (a tie keeps the share given first); test on held-out scenes
    once. Returns the test metrics, the share kept, every segmenter's validation IoU (``tried``; ``train_seconds``
    is their sum) and ``all_building_iou``, what predicting "building" everywhere scores there."""
    recolour = recolour_shares(recolour)
    torch.set_num_threads(threads)
    synthetic = load_pairs_folder(run_dir / "synthetic", size)
    val = make_scenes(range(VAL_SEED_BASE, VAL_SEED_BASE + 32), size)
    test_images, test_masks = make_scenes(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + test_scenes), size)
    tried, models = [], []
    for share in recolour:
        model, info = train_segmenter(synthetic.images, synthetic.masks,
                                      SegConfig(steps=steps, eval_every=50, recolour=share), val=val)
        tried.append({"recolour": share, "best_val_iou": info["best_val_iou"], "best_step": info["best_step"],
                      "train_seconds": info["train_seconds"]})
        models.append(model)
    pick = max(range(len(tried)), key=lambda i: tried[i]["best_val_iou"])  # a tie keeps the earlier
    kept = tried[pick]
    probs = predict(models[pick], test_images)
    result = {**metrics(probs > 0.5, test_masks), "train_seconds": sum(t["train_seconds"] for t in tried),
              "train_pairs": len(synthetic), "test_scenes": test_scenes, "recolour": kept["recolour"],
              "val_iou": kept["best_val_iou"], "tried": tried}
    prediction_grid(test_images, test_masks, (probs > 0.5).astype(np.uint8), run_dir / "predictions" / "dgan.png")
    baseline = metrics(np.ones_like(test_masks, dtype=bool), test_masks)  # predict "building" everywhere
    (run_dir / "results.json").write_text(json.dumps({
        "dataset": "built-in scenes", "partition": "iid", "resolution": size,
        "methods": {"dgan": result, "all_building_baseline": baseline},
        "note": "segmentation trained on synthetic images only, tested on held-out scenes",
    }, indent=2))
    return {**result, "all_building_iou": baseline["iou"]}
