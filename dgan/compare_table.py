"""`dgan compare`'s rich tables, from :func:`dgan.compare_runs.compare`'s result."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

_REFERENCE_NAMES = {"real_all": "real_all", "real_partial": "real_partial (departments' mean)"}


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _references(console: Console, result: dict[str, Any]) -> None:
    """Real-data test IoU per split (runs on one split carry the same cached figures; shown once where equal)."""
    by_split: dict[str, set[str]] = {}
    for ref in result["references"]:
        text = ", ".join(f"{_REFERENCE_NAMES[k]} {ref[k]:.3f}" for k in _REFERENCE_NAMES if k in ref)
        if text:
            by_split.setdefault(ref["split"], set()).add(text)
    for split, texts in by_split.items():
        console.print(f"real data, test IoU on {split}: {' | '.join(sorted(texts))}")


def print_comparison(console: Console, result: dict[str, Any]) -> None:
    for warning in result["warnings"]:
        console.print(f"[yellow]{warning}[/yellow]")
    per = Table(title="Per GAN training: mean IoU over its segmenters (validation picks each segmenter's step)")
    for col in ("label:method", "feedback", "split", "GAN seed", "segmenters", "val", "test"):
        per.add_column(col, justify="left" if col in ("label:method", "feedback", "split") else "right")
    for name, splits in result["methods"].items():
        for split, seeds in splits.items():
            for g, f in seeds.items():
                per.add_row(name, "/".join(result["feedback"].get(name, [])), split, g, str(f["n"]), _f(f["val"]),
                            _f(f["test"]))
    console.print(per)
    _references(console, result)
    for comp in result["comparisons"]:
        t = Table(title=f"{comp['other']} against {comp['base']}, paired by split and GAN seed "
                        "(over the segmenters both ran; Δ difference, × ratio)")
        for col in ("split", "GAN seed", "val base", "val", "Δ", "×", "test base", "test", "Δ ", "× "):
            t.add_column(col, justify="right")
        for r in comp["pairs"]:
            cells = [c for s in ("val", "test") for c in (_f(r[f"{s}_base"]), _f(r[f"{s}_other"]),
                                                          _f(r[f"{s}_diff"], True), _f(r[f"{s}_ratio"]))]
            t.add_row(r["split"], str(r["gan_seed"]), *cells)
        v, s = comp["val"], comp["test"]
        t.add_row("mean, min ×", "", "", "", _f(v["mean_diff"], True), _f(v["min_ratio"]), "", "",
                  _f(s["mean_diff"], True), _f(s["min_ratio"]), style="bold")
        console.print(t)
        for name, x in (("val", v), ("test", s)):
            ci = x["ci95"]
            console.print(f"{name}: mean Δ {_f(x['mean_diff'], True)}, SE {_f(x['se'])}, 95% interval "
                          f"[{_f(ci[0], True)}, {_f(ci[1], True)}] over {x['pairs']} pairs; ahead in {x['ahead']}, "
                          f"behind in {x['behind']}; every pair >= {x['every_pair_at_least']}x: "
                          f"{ {True: 'yes', False: 'no', None: 'n/a (no pairs)'}[x['every_pair_met']]}")
        for split, gans in comp["unpaired_gan_seeds"].items():
            console.print(f"[yellow]{split}: GAN seed(s) {gans} of one side have no pair, so 'every pair' cannot "
                          "hold[/yellow]")
        for split, seeds in comp["unpaired_segmenters"].items():
            console.print(f"[yellow]{split}: segmenter seeds {seeds} left unpaired (another --seeds or "
                          "--gan-seeds)[/yellow]")
        if comp["splits_unpaired"]:
            console.print(f"[yellow]only one side has {', '.join(comp['splits_unpaired'])}: not paired[/yellow]")
