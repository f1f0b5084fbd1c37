"""Paired comparison of update-rule bench runs: pairs by split and seed, its interval, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.paired import load_rows, paired_difference
from dgan.cli import app
from dgan.paired_stats import t975


def _said(output: str) -> str:
    """The CLI's error without the panel's borders and line breaks."""
    return " ".join(output.replace("│", " ").split())


def _run(path: Path, rows: list[tuple[str, str, int, float]]) -> Path:
    path.write_text(json.dumps({"runs": [{"rule": r, "test": t, "gan_seed": s, "val_iou_raw": v, "val_iou_ema": v / 2}
                                         for r, t, s, v in rows]}))
    return path


def test_runs_made_apart_pair_by_split_and_seed_and_give_the_textbook_interval(tmp_path: Path) -> None:
    first = _run(tmp_path / "a.json", [("f16", "tile=8", 0, 0.10), ("f16", "tile=8", 1, 0.20),
                                       ("int8", "tile=8", 0, 0.12), ("int8", "tile=8", 1, 0.26)])
    later = _run(tmp_path / "b.json", [("f16", "tile=5", 7, 0.30), ("int8", "tile=5", 7, 0.31),
                                       ("int8", "tile=5", 8, 0.90)])  # seed 8 has no f16 twin: left out
    res = paired_difference(load_rows([first, later]), "f16", "int8", "val_iou_raw")
    assert res["pairs"] == 3 and [p["gan_seed"] for p in res["per_pair"]] == [7, 0, 1]
    assert res["diff_mean"] == pytest.approx(0.03) and res["diff_sd"] == pytest.approx(0.026457513)
    half = 4.303 * 0.026457513 / 3 ** 0.5  # t(0.975, 2 df) * sd / sqrt(n)
    assert res["ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    assert res["b_better"] == 3 and res["b_worse"] == 0
    assert t975(19) == 2.093 and t975(120) == pytest.approx(1.98, abs=0.002)


def test_disagreeing_duplicates_and_too_few_pairs_are_refused(tmp_path: Path) -> None:
    one = _run(tmp_path / "a.json", [("f16", "tile=8", 0, 0.10), ("int8", "tile=8", 0, 0.12)])
    other = _run(tmp_path / "b.json", [("f16", "tile=8", 0, 0.11)])
    with pytest.raises(ValueError, match="did not simulate the same thing"):
        load_rows([one, other])
    with pytest.raises(ValueError, match="share 1"):
        paired_difference(load_rows([one]), "f16", "int8", "val_iou_raw")
    res = CliRunner().invoke(app, ["bench", "paired", str(one), "--a", "f16", "--b", "int8"])
    assert res.exit_code == 2 and "comparison needs at least 2" in _said(res.output)
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))  # another bench's result
    res = CliRunner().invoke(app, ["bench", "paired", str(tmp_path / "other.json")])
    assert res.exit_code == 2 and "not an update-rule bench result" in _said(res.output)


def test_bench_paired_prints_both_weights_and_writes_its_json(tmp_path: Path) -> None:
    runs = _run(tmp_path / "a.json", [("f16", "tile=8", s, 0.1 * s) for s in range(3)]
                + [("int8", "tile=8", s, 0.1 * s + 0.01 * s) for s in range(3)])
    res = CliRunner().invoke(app, ["bench", "paired", str(runs), "--a", "f16", "--b", "int8", "--json",
                                   str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert [c["metric"] for c in out["comparisons"]] == ["val_iou_raw", "val_iou_ema"]
    assert out["comparisons"][0]["diff_mean"] == pytest.approx(0.01)
