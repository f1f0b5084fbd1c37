"""Compare GAN methods across experiment runs, paired by test split, GAN seed and segmentation seed.

A recipe change (another precision, more steps, another update rule) is one ``dgan experiment`` per recipe and
split; this pairs each run's GAN trainings with the baseline's on the same test split and of the same GAN seed,
scored by segmenters of the same seeds, so that the spread between GAN seeds does not hide the change. Give the
runs of one recipe on several splits the same label (``fp32=runs/t8 fp32=runs/t5``) and the pairs of every split
are pooled. Pairs are only ever made within one test split: IoUs on different test sets do not compare."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgan.experiment_tables import PER_SEED_TARGET
from dgan.paired_stats import mean_se_ci95
from dgan.provenance import describe

TestKey = tuple[Any, ...]


class CompareError(ValueError):
    """A run that cannot be read or compared; the message says which and why."""


Seed = dict[str, Any]


def _number(x: Any) -> float | None:
    """A finite real number, or None (a string, a bool, NaN or infinity is not an IoU)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _segmenter(entry: Any) -> Seed | None:
    """One segmenter's figures from a method's ``seeds`` list, or None where they are not usable."""
    if not isinstance(entry, dict):
        return None
    g, iou = entry.get("gan_seed"), _number(entry.get("iou"))
    if isinstance(g, bool) or not isinstance(g, int) or iou is None:
        return None
    return {"gan_seed": g, "iou": iou, "val": _number(entry.get("best_val_iou"))}


@dataclass
class Run:
    label: str
    path: Path
    results: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def test_key(self) -> TestKey:
        """What must be equal for two runs' test IoUs to compare: the dataset (by its folder's name, so that
        ``../data/x`` and ``/home/me/data/x`` agree), the test spec and size, and the resolution."""
        r = self.results
        dataset = r.get("dataset")
        name = Path(dataset).name if isinstance(dataset, str) and dataset else dataset
        return tuple(json.dumps(x, sort_keys=True) for x in (name, r["splits"].get("test"), r["sizes"].get("test"),
                                                             r.get("resolution")))

    def feedback(self, method: str) -> Any:
        m = self.results["methods"][method]
        return m.get("feedback") if isinstance(m.get("feedback"), str) else None

    def gan_methods(self) -> list[str]:
        """Methods whose segmenters trained on a GAN's set (their seeds name the GAN seed)."""
        return [name for name, m in self.results["methods"].items()
                if isinstance(m, dict) and isinstance(m.get("seeds"), list)
                and any(_segmenter(s) is not None for s in m["seeds"])]

    def seeds(self, method: str) -> list[Seed | None]:
        """The method's segmenters by seed (a position is a segmentation seed: kept, None where not usable)."""
        rows = [_segmenter(s) for s in self.results["methods"][method]["seeds"]]
        bad = [i for i, r in enumerate(rows) if r is None]
        if bad:
            self.warnings.append(f"{self.label}:{method}: segmenter seed(s) {bad} have no usable gan_seed and iou: "
                                 "left out")
        return rows


def load_run(path: Path, label: str | None = None) -> Run:
    """A run folder (its ``results.json``) or the file itself."""
    if label is not None and (":" in label or not label.strip()):
        raise CompareError(f"label {label!r}: a label names a run in LABEL:METHOD, so it cannot hold ':'")
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no results.json (is it a `dgan experiment --out` folder?)")
    try:
        results = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CompareError(f"{file}: not readable as JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise CompareError(f"{file}: has no 'methods': not a `dgan experiment` results.json")
    for key in ("splits", "sizes"):
        if not isinstance(results.get(key, {}), dict):
            raise CompareError(f"{file}: '{key}' is not an object: not a `dgan experiment` results.json")
        results.setdefault(key, {})
    return Run(label or (file.parent.name if file.name == "results.json" else file.stem), file, results)


def _split_names(runs: list[Run]) -> dict[TestKey, str]:
    """A short name per test set: its test spec (``tile=8``), or all it is made of where specs repeat."""
    keys = list(dict.fromkeys(r.test_key for r in runs))
    plain = [[json.loads(part) for part in k] for k in keys]
    short = {k: str(p[1]) for k, p in zip(keys, plain, strict=True)}
    if len(set(short.values())) < len(keys):
        short = {k: f"{p[0]} {p[1]} ({p[2]} test images, {p[3]} px)" for k, p in zip(keys, plain, strict=True)}
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


def _figures(seeds: list[Seed | None], index: list[int] | None = None) -> dict[int, dict[str, float]]:
    """Per GAN seed: the mean test and validation IoU over the usable segmenters at these seed indices (all)."""
    by: dict[int, list[Seed]] = {}
    for i in range(len(seeds)) if index is None else index:
        if (row := seeds[i]) is not None:
            by.setdefault(row["gan_seed"], []).append(row)
    out = {}
    for g, rows in sorted(by.items()):
        val = [r["val"] for r in rows if r["val"] is not None]
        out[g] = {"n": len(rows), "test": sum(r["iou"] for r in rows) / len(rows),
                  "val": sum(val) / len(val) if len(val) == len(rows) else math.nan}
    return out


def _pair_runs(base: list[Seed | None], other: list[Seed | None]) -> tuple[list[int], list[int]]:
    """Segmenter seed indices both ran on the same GAN seed (segmentation seed s trains on GAN set s mod
    --gan-seeds, so runs with other --gan-seeds pair only where the two agree), and those left out."""
    common = [i for i in range(min(len(base), len(other)))
              if (b := base[i]) is not None and (o := other[i]) is not None and b["gan_seed"] == o["gan_seed"]]
    used = {i for i in range(max(len(base), len(other)))
            if (i < len(base) and base[i] is not None) or (i < len(other) and other[i] is not None)}
    return common, sorted(used - set(common))


def paired(base: dict[TestKey, list[Seed | None]], other: dict[TestKey, list[Seed | None]],
           names: dict[TestKey, str]) -> dict[str, Any]:
    """``other`` against ``base``: per test split both ran and per GAN seed, the difference and ratio of the mean
    IoUs over the segmenters both ran; then over all pairs, every split pooled. "Every pair >= 0.9x" holds only
    where every GAN training of either side found its pair: one left out might be the one that collapsed."""
    rows, seeds_used, unpaired, unpaired_gan = [], {}, {}, {}
    for key in (k for k in base if k in other):
        common, left = _pair_runs(base[key], other[key])
        seeds_used[names[key]], unpaired[names[key]] = common, left
        b, o = _figures(base[key], common), _figures(other[key], common)
        trained = set(_figures(base[key])) | set(_figures(other[key]))
        if trained - set(b):
            unpaired_gan[names[key]] = sorted(trained - set(b))
        for g in b:
            row: dict[str, Any] = {"split": names[key], "gan_seed": g, "segmenters": b[g]["n"]}
            for split in ("val", "test"):
                x, y = b[g][split], o[g][split]
                row.update({f"{split}_base": x, f"{split}_other": y, f"{split}_diff": y - x,
                            f"{split}_ratio": y / x if x else math.nan})
            rows.append(row)
    summary: dict[str, Any] = {"pairs": rows, "segmenter_seeds": seeds_used,
                               "unpaired_segmenters": {k: v for k, v in unpaired.items() if v},
                               "unpaired_gan_seeds": unpaired_gan,
                               "splits_unpaired": sorted(names[k] for k in set(base) ^ set(other))}
    complete = not unpaired_gan and not summary["splits_unpaired"]
    for split in ("val", "test"):
        diffs = [r[f"{split}_diff"] for r in rows if not math.isnan(r[f"{split}_diff"])]
        ratios = [r[f"{split}_ratio"] for r in rows if not math.isnan(r[f"{split}_ratio"])]
        mean, se, ci = mean_se_ci95(diffs)
        every = None if not ratios else bool(complete and len(ratios) == len(rows)
                                              and min(ratios) >= PER_SEED_TARGET)
        summary[split] = {"pairs": len(diffs), "mean_diff": mean, "se": se, "ci95": list(ci),
                          "ahead": sum(d > 0 for d in diffs), "behind": sum(d < 0 for d in diffs),
                          "min_ratio": min(ratios) if ratios else math.nan, "every_pair_at_least": PER_SEED_TARGET,
                          "every_pair_met": every}
    return summary


def compare(runs: list[Run], methods: list[str] | None, baseline: str | None) -> dict[str, Any]:
    """Every ``label:method`` against the baseline (default: the first run's first method)."""
    if not runs:
        raise CompareError("no runs to compare")
    warnings = _check(runs)
    names = _split_names(runs)
    entries: dict[str, dict[TestKey, list[Seed | None]]] = {}
    feedback: dict[str, set[Any]] = {}
    for run in runs:
        found = run.gan_methods()
        if not found:
            warnings.append(f"{run.path}: no GAN method with usable segmenter seeds (gan_seed and iou): left out")
        for m in found:
            if not methods or m in methods:
                entries.setdefault(f"{run.label}:{m}", {})[run.test_key] = run.seeds(m)
                feedback.setdefault(f"{run.label}:{m}", set()).add(run.feedback(m))
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
        base: dict[TestKey, list[Seed | None]] = {}
        for run in of_label:
            if method in run.gan_methods():
                base[run.test_key] = run.seeds(method)
                feedback.setdefault(base_name, set()).add(run.feedback(method))
        if not base:
            raise CompareError(f"{label} has no GAN method {method!r} (it has: "
                               f"{', '.join(dict.fromkeys(m for r in of_label for m in r.gan_methods())) or 'none'})")
        entries[base_name] = base
    comparisons = []
    for name, seeds in entries.items():
        if name != base_name:
            comparisons.append({"base": base_name, "other": name, **paired(entries[base_name], seeds, names)})
            if feedback[name] != feedback[base_name]:
                warnings.append(f"{name} and {base_name} learnt from other feedback modes "
                                f"({'/'.join(map(str, feedback[name]))} against "
                                f"{'/'.join(map(str, feedback[base_name]))})")
    if not comparisons:
        raise CompareError(f"nothing to compare against {base_name}: give a second run or method")
    warnings += [w for r in runs for w in dict.fromkeys(r.warnings)]
    made_by = {r.label + " " + str(r.path): r.results.get("code") for r in runs}
    if any(isinstance(c, dict) for c in made_by.values()) and len({describe(c) for c in made_by.values()}) > 1:
        warnings.append("made by other code: " + "; ".join(f"{k}: {describe(c)}" for k, c in made_by.items()))
    return {"baseline": base_name, "runs": [{"label": r.label, "path": str(r.path), "split": names[r.test_key]}
                                            for r in runs],
            "warnings": warnings, "references": [{"label": r.label, "split": names[r.test_key], **references(r)}
                                                 for r in runs],
            "feedback": {name: sorted(map(str, modes)) for name, modes in feedback.items()},
            "methods": {name: {names[k]: {str(g): f for g, f in _figures(s).items()}
                               for k, s in by_split.items()} for name, by_split in entries.items()},
            "comparisons": comparisons}


def references(run: Run) -> dict[str, float]:
    """The real-data yardsticks a run carries: real_all's test IoU and the departments' mean (real_partial)."""
    out = {}
    for name in ("real_all", "real_partial"):
        m = run.results["methods"].get(name)
        if isinstance(m, dict) and (iou := _number(m.get("iou"))) is not None:
            out[name] = iou
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
