"""Compare GAN methods across experiment runs, paired by test split, GAN seed and segmentation seed.

A recipe change (another precision, more steps, another update rule) is one ``dgan experiment`` per recipe and
split; this pairs each run's GAN trainings with the baseline's on the same test split and of the same GAN seed,
scored by segmenters of the same seeds, so that the spread between GAN seeds does not hide the change. Give the
runs of one recipe on several splits the same label (``fp32=runs/t8 fp32=runs/t5``) and the pairs of every split
are pooled. Pairs are only ever made within one test split: IoUs on different test sets do not compare."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgan.experiment_tables import PER_SEED_TARGET
from dgan.paired_stats import mean_se_ci95

TestKey = tuple[Any, ...]


class CompareError(ValueError):
    """A run that cannot be read or compared; the message says which and why."""


@dataclass
class Run:
    label: str
    path: Path
    results: dict[str, Any]

    @property
    def test_key(self) -> TestKey:
        """What must be equal for two runs' test IoUs to compare."""
        r = self.results
        return (r.get("dataset"), (r.get("splits") or {}).get("test"), (r.get("sizes") or {}).get("test"),
                r.get("resolution"))

    def gan_methods(self) -> list[str]:
        """Methods whose segmenters trained on a GAN's set (their seeds name the GAN seed)."""
        return [name for name, m in self.results["methods"].items()
                if isinstance(m, dict) and isinstance(m.get("seeds"), list)
                and any(isinstance(s, dict) and isinstance(s.get("gan_seed"), int) for s in m["seeds"])]

    def seeds(self, method: str) -> list[dict[str, Any]]:
        return [s for s in self.results["methods"][method]["seeds"] if isinstance(s, dict)]


def load_run(path: Path, label: str | None = None) -> Run:
    """A run folder (its ``results.json``) or the file itself."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no results.json (is it a `dgan experiment --out` folder?)")
    try:
        results = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{file}: not readable as JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise CompareError(f"{file}: has no 'methods': not a `dgan experiment` results.json")
    return Run(label or (file.parent.name if file.name == "results.json" else file.stem), file, results)


def _split_names(runs: list[Run]) -> dict[TestKey, str]:
    """A short name per test set: its test spec (``tile=8``), or all it is made of where specs repeat."""
    keys = list(dict.fromkeys(r.test_key for r in runs))
    short = {k: str(k[1]) for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: f"{k[0]} {k[1]} ({k[2]} test images, {k[3]} px)" for k in keys}
    return short


def _check(runs: list[Run]) -> list[str]:
    """Refuse two runs of one label on one test set; warn where only the validation columns cannot compare."""
    seen: dict[tuple[str, TestKey], Run] = {}
    for run in runs:
        if (run.label, run.test_key) in seen:
            raise CompareError(f"{run.path} and {seen[run.label, run.test_key].path} have the same label "
                               f"({run.label!r}) and test set: name them LABEL=PATH")
        seen[run.label, run.test_key] = run
    warnings = []
    val: dict[TestKey, Any] = {}
    for run in runs:
        v = (run.results.get("sizes") or {}).get("val")
        if val.setdefault(run.test_key, v) != v:
            warnings.append(f"{run.path}: a validation set of another size than the other runs on its test set: "
                            "its val column does not compare")
    if len({r.test_key for r in runs}) > 1:
        warnings.append(f"{len({r.test_key for r in runs})} test sets: pairs are made within each, and pooled")
    return warnings


def _figures(seeds: list[dict[str, Any]], index: list[int]) -> dict[int, dict[str, float]]:
    """Per GAN seed: the mean test and validation IoU over the segmenters at these seed indices."""
    by: dict[int, list[dict[str, Any]]] = {}
    for i in index:
        by.setdefault(int(seeds[i]["gan_seed"]), []).append(seeds[i])
    out = {}
    for g, rows in sorted(by.items()):
        val = [float(r["best_val_iou"]) for r in rows if isinstance(r.get("best_val_iou"), (int, float))]
        out[g] = {"n": len(rows), "test": sum(float(r["iou"]) for r in rows) / len(rows),
                  "val": sum(val) / len(val) if len(val) == len(rows) else math.nan}
    return out


def _pair_runs(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Segmenter seed indices both ran on the same GAN seed (segmentation seed s trains on GAN set s mod
    --gan-seeds, so runs with other --gan-seeds pair only where the two agree), and those left out."""
    common = [i for i in range(min(len(base), len(other)))
              if isinstance(base[i].get("gan_seed"), int) and base[i].get("gan_seed") == other[i].get("gan_seed")]
    return common, sorted(set(range(max(len(base), len(other)))) - set(common))


def paired(base: dict[TestKey, list[dict[str, Any]]], other: dict[TestKey, list[dict[str, Any]]],
           names: dict[TestKey, str]) -> dict[str, Any]:
    """``other`` against ``base``: per test split both ran and per GAN seed, the difference and ratio of the mean
    IoUs over the segmenters both ran; then over all pairs, every split pooled."""
    rows, seeds_used, unpaired = [], {}, {}
    for key in (k for k in base if k in other):
        common, left = _pair_runs(base[key], other[key])
        seeds_used[names[key]], unpaired[names[key]] = common, left
        b, o = _figures(base[key], common), _figures(other[key], common)
        for g in b:
            row: dict[str, Any] = {"split": names[key], "gan_seed": g, "segmenters": b[g]["n"]}
            for split in ("val", "test"):
                x, y = b[g][split], o[g][split]
                row.update({f"{split}_base": x, f"{split}_other": y, f"{split}_diff": y - x,
                            f"{split}_ratio": y / x if x else math.nan})
            rows.append(row)
    summary: dict[str, Any] = {"pairs": rows, "segmenter_seeds": seeds_used,
                               "unpaired_segmenters": {k: v for k, v in unpaired.items() if v},
                               "splits_unpaired": sorted(names[k] for k in set(base) ^ set(other))}
    for split in ("val", "test"):
        diffs = [r[f"{split}_diff"] for r in rows if not math.isnan(r[f"{split}_diff"])]
        ratios = [r[f"{split}_ratio"] for r in rows if not math.isnan(r[f"{split}_ratio"])]
        mean, se, ci = mean_se_ci95(diffs)
        summary[split] = {"pairs": len(diffs), "mean_diff": mean, "se": se, "ci95": list(ci),
                          "ahead": sum(d > 0 for d in diffs), "behind": sum(d < 0 for d in diffs),
                          "min_ratio": min(ratios) if ratios else math.nan, "every_pair_at_least": PER_SEED_TARGET,
                          "every_pair_met": bool(rows and len(ratios) == len(rows)
                                                 and min(ratios) >= PER_SEED_TARGET)}
    return summary


def compare(runs: list[Run], methods: list[str] | None, baseline: str | None) -> dict[str, Any]:
    """Every ``label:method`` against the baseline (default: the first run's first method)."""
    if not runs:
        raise CompareError("no runs to compare")
    warnings = _check(runs)
    names = _split_names(runs)
    entries: dict[str, dict[TestKey, list[dict[str, Any]]]] = {}
    for run in runs:
        for m in run.gan_methods():
            if not methods or m in methods:
                entries.setdefault(f"{run.label}:{m}", {})[run.test_key] = run.seeds(m)
    missing = [m for m in methods or [] if not any(name.endswith(f":{m}") for name in entries)]
    if missing:
        raise CompareError(f"no run has GAN method {', '.join(map(repr, missing))}")
    if not entries:
        raise CompareError("no GAN methods in these runs")
    base_name = baseline or next(iter(entries))
    if baseline is not None:
        label, _, method = baseline.partition(":")
        of_label = [r for r in runs if r.label == label]
        if not of_label or not method:
            raise CompareError(f"--baseline {baseline!r}: give LABEL:METHOD, with LABEL one of "
                               f"{', '.join(dict.fromkeys(r.label for r in runs))}")
        base: dict[TestKey, list[dict[str, Any]]] = {}
        for run in of_label:
            if method in run.gan_methods():
                base[run.test_key] = run.seeds(method)
        if not base:
            raise CompareError(f"{label} has no GAN method {method!r} (it has: "
                               f"{', '.join(dict.fromkeys(m for r in of_label for m in r.gan_methods())) or 'none'})")
        entries[base_name] = base
    comparisons = []
    for name, seeds in entries.items():
        if name != base_name:
            comparisons.append({"base": base_name, "other": name, **paired(entries[base_name], seeds, names)})
    return {"baseline": base_name, "runs": [{"label": r.label, "path": str(r.path), "split": names[r.test_key]}
                                            for r in runs],
            "warnings": warnings, "references": [{"label": r.label, "split": names[r.test_key], **references(r)}
                                                 for r in runs],
            "methods": {name: {names[k]: {str(g): f for g, f in _figures(s, list(range(len(s)))).items()}
                               for k, s in by_split.items()} for name, by_split in entries.items()},
            "comparisons": comparisons}


def references(run: Run) -> dict[str, float]:
    """The real-data yardsticks a run carries: real_all's test IoU and the departments' mean (real_partial)."""
    out = {}
    for name in ("real_all", "real_partial"):
        m = run.results["methods"].get(name)
        if isinstance(m, dict) and isinstance(m.get("iou"), (int, float)):
            out[name] = float(m["iou"])
    return out


def parse_run_arg(arg: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` or ``PATH``."""
    label, sep, path = arg.partition("=")
    return (label, Path(path)) if sep and label and "/" not in label else (None, Path(arg))


def strict_json(value: Any) -> Any:
    """NaN (a ratio with a zero base, a missing validation figure) as null: JSON has no NaN."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
