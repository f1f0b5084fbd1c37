"""Paired comparison of two update-rule bench rules: the same splits and GAN seeds, from one or several runs.

The simulation is deterministic, so runs made at different times (``--first-seed``) pair up by (split, GAN
seed). What differs within a pair is the rule alone; the spread between pairs is the GAN's own seed-to-seed
chaos, which is why a mean difference needs many pairs and a confidence interval, not one or two runs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dgan.paired_stats import mean_se_ci95


def load_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Every run row of these bench JSONs; a (rule, split, seed) seen twice must agree (the bench is deterministic)."""
    seen: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise ValueError(f"{path} is not an update-rule bench result (it has no list of runs)")
        for row in doc["runs"]:
            key = (row["rule"], row["test"], row["gan_seed"])
            if key in seen and seen[key]["val_iou_raw"] != row["val_iou_raw"]:
                raise ValueError(f"{path}: {key} scored {row['val_iou_raw']} here and {seen[key]['val_iou_raw']} "
                                 "before; these runs did not simulate the same thing")
            seen[key] = row
    return list(seen.values())


def paired_difference(rows: list[dict[str, Any]], a: str, b: str, metric: str) -> dict[str, Any]:
    """``b - a`` per (split, seed) both rules ran: mean, standard deviation, 95% t interval, and who won."""
    by = {(r["rule"], r["test"], r["gan_seed"]): r[metric] for r in rows}
    keys = sorted({(t, s) for (rule, t, s) in by if rule == a} & {(t, s) for (rule, t, s) in by if rule == b})
    diffs = [by[(b, t, s)] - by[(a, t, s)] for t, s in keys]
    if len(diffs) < 2:
        raise ValueError(f"{a} and {b} share {len(diffs)} (split, seed) pair(s); a comparison needs at least 2")
    mean, _, ci95 = mean_se_ci95(diffs)
    sd = statistics.stdev(diffs)
    return {"metric": metric, "a": a, "b": b, "pairs": len(diffs), "mean_a": statistics.mean(by[(a, *k)] for k in keys),
            "mean_b": statistics.mean(by[(b, *k)] for k in keys), "diff_mean": mean, "diff_sd": sd,
            "ci95": list(ci95), "diff_median": statistics.median(diffs),
            "b_better": sum(d > 0 for d in diffs), "b_worse": sum(d < 0 for d in diffs),
            "per_pair": [{"test": t, "gan_seed": s, "a": by[(a, t, s)], "b": by[(b, t, s)]} for t, s in keys]}


def run_paired(paths: list[Path], a: str, b: str, json_out: Path | None) -> list[dict[str, Any]]:
    rows = load_rows(paths)
    result = [paired_difference(rows, a, b, m) for m in ("val_iou_raw", "val_iou_ema")]
    table = Table(title="b - a, paired by split and GAN seed: segmentation validation IoU", caption=f"a = {a}, b = {b}")
    for col in ("weights", "pairs", "a", "b", "b - a", "95% interval", "median", "b better / worse"):
        table.add_column(col, justify="right")
    for r in result:
        table.add_row(r["metric"].removeprefix("val_iou_"), str(r["pairs"]), f"{r['mean_a']:.3f}", f"{r['mean_b']:.3f}",
                      f"{r['diff_mean']:+.3f}", f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]",
                      f"{r['diff_median']:+.3f}", f"{r['b_better']} / {r['b_worse']}")
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"inputs": [str(p) for p in paths], "comparisons": result}, indent=2))
    return result
