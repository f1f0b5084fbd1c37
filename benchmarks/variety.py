"""Does synthesis use the variety the generator has?  Several dropout draws per mask, measured on validation.

For each trained generator (a run's checkpoint) it synthesises the experiment's training masks with 1, 2, 4...
dropout draws per mask, trains the experiment's segmenter on each set for the same number of steps, and
reports the best validation IoU (the test tiles are never read).  Beside it, how much the draws differ:
the mean absolute pixel difference between two draws of one mask, against that between the images of two
different masks, and between two draws of a mask with no foreground (an empty mask is the same input every
time, so dropout is its only source of variety).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dgan.experiment import DUBAI_TEST, ExperimentConfig, make_splits, synthesize_set
from dgan.segment import SegConfig, train_segmenter
from dgan.training.checkpoints import load_checkpoint
from dgan.training.generator import GeneratorTrainer


def draw_differences(gen: GeneratorTrainer, masks: np.ndarray, limit: int = 64,
                     weights: str = "auto") -> dict[str, float | int]:
    """Mean |a - b| in [0, 1] between two draws of each mask, between images of different masks (one draw), and
    between two draws of the empty masks among the first ``limit``."""
    masks = masks[:limit]
    a = gen.synthesize(masks, seed=1000, weights=weights).astype(np.float32) / 255
    b = gen.synthesize(masks, seed=1001, weights=weights).astype(np.float32) / 255
    per_mask = np.abs(a - b).mean(axis=(1, 2, 3))
    other = np.abs(a - np.roll(a, 1, axis=0)).mean(axis=(1, 2, 3)) if len(a) > 1 else np.zeros(1)
    empty = (masks.reshape(len(masks), -1) == 0).all(axis=1)
    return {"draw_diff": float(per_mask.mean()), "mask_diff": float(other.mean()),
            "empty_draw_diff": float(per_mask[empty].mean()) if empty.any() else float("nan"),
            "empty_masks": int(empty.sum()), "masks": len(masks)}


def experiment_settings(checkpoint: Path, test: str | None) -> tuple[str, str, dict[str, Any]]:
    """The split (test, groups) and segmenter settings of the experiment that trained ``checkpoint``, from its
    ``results.json`` (EXPERIMENT/dgan_.../checkpoints/latest.pt) when there is one: another split would move
    that experiment's test tiles into these sets."""
    parents = checkpoint.resolve().parents
    results = parents[2] / "results.json" if len(parents) > 2 else None
    if results is None or not results.is_file():
        return test or DUBAI_TEST, "", {}
    config = json.loads(results.read_text()).get("config", {})
    if test is not None and test != config.get("test", test):
        raise ValueError(f"{checkpoint} was trained with the test split {config['test']!r}, not {test!r}")
    seg = {k: v for k, v in config.get("seg", {}).items()
           if k in ("width", "depth", "batch_size", "lr", "standardize", "photometric", "positive_share")}
    return config.get("test", test or DUBAI_TEST), config.get("groups", ""), seg


def run_variety_benchmark(checkpoints: list[Path], data: Path | None, test: str | None, draws: list[int],
                          seeds: int, seg_steps: int, json_out: Path | None, quick: bool = False) -> dict[str, Any]:
    if not checkpoints or not draws or min(draws) < 1 or seeds < 1 or seg_steps < 1:
        raise ValueError("need checkpoints, draws >= 1, seeds >= 1 and seg_steps >= 1")
    torch.set_num_threads(2)
    rows: list[dict[str, Any]] = []
    spread: list[dict[str, Any]] = []
    for path in checkpoints:
        gen = GeneratorTrainer.from_state(load_checkpoint(path))
        split, groups, seg_settings = experiment_settings(path, test)
        splits = make_splits(ExperimentConfig(out=Path("."), data=data, size=gen.model_cfg.image_size, test=split,
                                              groups=groups, scenes=96 if quick else 600))
        masks = splits.train.masks[:64] if quick else splits.train.masks
        # dropout's variety alone: a checkpoint with snapshots would switch snapshot with each draw (the EMA, or
        # the last weights, as `auto` gave before snapshots existed)
        which = gen.weights_available("ema")
        spread.append({"run": str(path), "test": split, "weights": which,
                       **draw_differences(gen, masks, weights=which)})
        val = (splits.val.images, splits.val.masks)
        for k in draws:
            train = synthesize_set(gen, masks, k, weights=which, classes=splits.train.classes)
            for s in range(seeds):
                seg = SegConfig(**{**seg_settings, "steps": seg_steps, "eval_every": max(1, min(100, seg_steps)),
                                   "seed": s, "num_classes": len(splits.train.classes)})
                _, info = train_segmenter(train.images, train.masks, seg, val=val)
                rows.append({"run": str(path), "test": split, "draws": k, "seg_seed": s, "pairs": len(train),
                             "val_iou": info["best_val_iou"], "seg_steps": seg_steps})
    summary = [{"draws": k, "val_iou_mean": statistics.mean(r["val_iou"] for r in rows if r["draws"] == k),
                "runs": len({r["run"] for r in rows if r["draws"] == k})} for k in draws]
    table = Table(title="Dropout draws per mask: segmentation validation IoU (same steps)")
    for col in ("draws per mask", "mean val IoU", *(Path(p).parent.parent.name or p for p in
                                                   dict.fromkeys(str(c) for c in checkpoints))):
        table.add_column(col, justify="right")
    for k, sm in zip(draws, summary, strict=True):
        per_run = [statistics.mean(r["val_iou"] for r in rows if r["draws"] == k and r["run"] == str(p))
                   for p in dict.fromkeys(checkpoints)]
        table.add_row(str(k), f"{sm['val_iou_mean']:.3f}", *(f"{v:.3f}" for v in per_run))
    console = Console()
    console.print(table)
    diff = Table(title="How much the draws differ (mean |a - b|, pixels in [0, 1])")
    for col in ("run", "two draws, one mask", "two masks", "two draws, empty mask", "empty masks"):
        diff.add_column(col, justify="right")
    for d in spread:
        diff.add_row(Path(d["run"]).parent.parent.name, f"{d['draw_diff']:.4f}", f"{d['mask_diff']:.4f}",
                     f"{d['empty_draw_diff']:.4f}", f"{d['empty_masks']} / {d['masks']}")
    console.print(diff)
    result = {"data": str(data), "draws": draws, "seeds": seeds, "seg_steps": seg_steps,
              "quick": quick, "rows": rows, "summary": summary, "differences": spread}
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
