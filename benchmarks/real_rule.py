"""The `real` rule of `dgan bench update-rule`: the same training as a real run, processes over the broker.

The simulation replays a fixed, machine-independent schedule; a real run has a
broker, one process per node, OS-random discriminator weights and the
machine's own timing.  Both start from the same splits, partition, models,
recipe and feedback budget, so their validation IoUs compare side by side.  A
real run also has the nodes' judges: each row carries their late verdicts, to
see whether they foretell the synthetic set's quality.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dgan.experiment import ExperimentConfig, Splits, dgan_run, make_splits, synthesize_set
from dgan.segment import SegConfig, train_segmenter
from dgan.training.generator import GeneratorTrainer

JUDGES = ("label_iou", "transfer_iou")
# the real rule is dgan's rule as the simulations measured it: two requests in flight per node and the last weights
# (the experiment's defaults since session 20 are 1 and 4 snapshots: `async-p1-f16` is their simulated twin)
REAL_PIPELINE = 2


def late_verdicts(run_dir: Path) -> dict[str, float | None]:
    """Each judge's verdicts over the run's second half: the mean over nodes of each node's mean."""
    doc = json.loads((run_dir / "feedback.json").read_text())  # the columns and every row, as the run ended
    cols, rows = doc["columns"], doc["rows"]
    at, who = cols.index("step"), cols.index("node")
    last = max((r[at] for r in rows), default=0)
    out: dict[str, float | None] = {}
    for key in JUDGES:
        per: dict[str, list[float]] = {}
        if key in cols:
            k = cols.index(key)
            for r in rows:
                if len(r) > k and r[k] is not None and r[at] >= last / 2:
                    per.setdefault(r[who], []).append(r[k])
        out[f"{key}_late"] = (round(statistics.mean(statistics.mean(v) for v in per.values()), 4)
                              if per else None)
    return out


# the scorer of every rule, simulated or real; it lives here, not in update_rule, because update_rule imports this
def score_weights(gen: GeneratorTrainer, splits: Splits, samples_per_mask: int, weights: tuple[str, ...],
                  seg_steps: int, seg_seeds: int = 1) -> dict[str, Any]:
    """``val_iou_W`` per weights W: the best validation IoU of a segmenter trained on the set W synthesises. With
    several segmentation seeds, their mean, and each under ``val_iou_W_by_seg_seed``: one segmenter's own seed moved
    a synthetic set's IoU by up to 0.10 (session 21), as much as many a difference between rules."""
    if seg_seeds < 1:
        raise ValueError(f"need at least one segmentation seed, got {seg_seeds}")
    row: dict[str, Any] = {}
    val = (splits.val.images, splits.val.masks)
    for which in weights:
        syn = synthesize_set(gen, splits.train.masks, samples_per_mask, weights=which)
        ious = [round(float(train_segmenter(syn.images, syn.masks, SegConfig(steps=seg_steps, seed=k), val=val)[1][
            "best_val_iou"]), 4) for k in range(seg_seeds)]
        row[f"val_iou_{which}"] = ious[0] if seg_seeds == 1 else round(statistics.mean(ious), 4)
        if seg_seeds > 1:
            row[f"val_iou_{which}_by_seg_seed"] = ious
    return row


def real_row(cfg: ExperimentConfig, seed: int, feedbacks: int, feedback: str, ema: float, seg_steps: int,
             name: str = "real", pipeline: int = REAL_PIPELINE, snapshots: int = 0, seg_seeds: int = 1
             ) -> dict[str, Any]:
    """One real DGAN training (async, 4 node processes and a broker) scored as the simulated rules are: the raw
    and EMA weights, and G's snapshots when it keeps them."""
    splits = make_splits(cfg)
    with tempfile.TemporaryDirectory(prefix="dgan-real-rule-") as tmp:
        # one D step per feedback, as the simulated rule "async" it is set beside (not the nodes' default of 2)
        run_cfg = replace(cfg, out=Path(tmp), gan_steps=feedbacks, ema=ema, num_classes=len(splits.train.classes),
                          pipeline=pipeline, snapshots=snapshots, d_steps=1)
        trained = dgan_run(run_cfg, splits, "async", seed, feedback)
        gen, gan_s = trained.generator, trained.seconds
        run_dir = Path(tmp) / f"dgan_async_{feedback}_seed{seed}"
        summary = json.loads((run_dir / "run.json").read_text())
        judges = late_verdicts(run_dir)
    stale = [n["staleness_mean"] for n in summary["nodes"].values() if n.get("staleness_mean") is not None]
    row: dict[str, Any] = {
        "rule": name, "test": cfg.test, "gan_seed": seed, "feedbacks": feedbacks, "gan_seconds": round(gan_s, 1),
        "steps": summary["steps"], "staleness_mean": float(np.mean(stale)) if stale else 0.0,
        "staleness_max": max((n.get("staleness_max") or 0 for n in summary["nodes"].values()), default=0),
        "dropped_stale": summary["counters"].get("dropped_stale", 0), **judges,
        **{k: summary.get(k) for k in ("label_iou_best", "degraded_alarms", "transfer_iou_best",
                                       "transfer_iou_alarms")}}
    return {**row, **score_weights(gen, splits, cfg.samples_per_mask, ("raw", "ema", *(("snapshots",) if snapshots
                                                                                     else ())), seg_steps, seg_seeds)}


def _ranks(values: list[float]) -> np.ndarray:
    x = np.asarray(values, float)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def rank_correlation(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho: does a judge rank the runs as the validation IoU does? None below 3 runs or if constant."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return round(float(np.corrcoef(ra, rb)[0, 1]), 3)


def judge_agreement(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per judge, over the real runs that have its late verdict: rank correlation with val IoU (raw)."""
    out: dict[str, float | None] = {}
    for key in JUDGES:
        pts = [(r["val_iou_raw"], r[f"{key}_late"]) for r in rows if r.get(f"{key}_late") is not None]
        out[key] = rank_correlation([p[0] for p in pts], [p[1] for p in pts])
    return out


def score_runs(checkpoints: list[Path], data: Path | None, test: str | None, weights: tuple[str, ...],
               seg_steps: int, seg_seeds: int, json_out: Path | None = None) -> list[dict[str, Any]]:
    """Finished runs' generators (``checkpoints/latest.pt``) scored as this bench scores its rules, so a run made
    by ``dgan experiment`` or ``dgan run`` compares with the simulated rules' rows; the split is the one the run's
    experiment kept out (its ``results.json``), so its test tiles stay out of the sets."""
    from rich.console import Console
    from rich.table import Table

    from benchmarks.variety import experiment_settings
    from dgan.training.checkpoints import load_checkpoint

    rows = []
    loaded: dict[tuple[int, int, str, str], Splits] = {}  # runs of one experiment share its splits: load them once
    for ckpt in checkpoints:
        gen = GeneratorTrainer.from_state(load_checkpoint(ckpt))
        split, groups, _ = experiment_settings(ckpt, test)
        cfg = ExperimentConfig(out=Path("/nonexistent"), data=data, size=gen.model_cfg.image_size, test=split,
                               groups=groups, num_classes=gen.model_cfg.num_classes)
        key = (cfg.size, cfg.num_classes, split, groups)
        if key not in loaded:
            loaded[key] = make_splits(cfg)
        splits = loaded[key]
        rows.append({"checkpoint": str(ckpt), "test": split, "step": gen.step, "seg_steps": seg_steps,
                     "weights_used": {w: gen.weights_available(w) for w in weights},
                     **score_weights(gen, splits, cfg.samples_per_mask, weights, seg_steps, seg_seeds)})
    table = Table(title=f"finished runs scored as `dgan bench update-rule` scores its rules: validation IoU, "
                        f"{seg_steps}-step segmenter x {seg_seeds} seed(s)")
    for col in ("checkpoint", "test", *weights):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r in rows:
        table.add_row(r["checkpoint"], r["test"], *(f"{r[f'val_iou_{w}']:.3f}" for w in weights))
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"weights": list(weights), "seg_steps": seg_steps, "seg_seeds": seg_seeds,
                                        "data": str(data) if data else "scenes", "runs": rows}, indent=2))
    return rows
