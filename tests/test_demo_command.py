"""`dgan demo`'s closing lines: the segmenter's IoU beside what predicting "building" everywhere scores."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgan.cli import app


@pytest.mark.parametrize(("iou", "warned"), [(0.021, True), (0.089, True), (0.213, False)])
def test_the_demo_says_when_its_segmenter_does_no_better_than_predicting_building_everywhere(
        tmp_path: Path, started_runs: list, monkeypatch: pytest.MonkeyPatch, iou: float, warned: bool) -> None:
    import dgan.demo
    import dgan.report

    scored = {"iou": iou, "f1": 0.3, "precision": 0.4, "recall": 0.5, "all_building_iou": 0.089}
    monkeypatch.setattr(dgan.demo, "segment_synthetic", lambda out, **kw: scored)
    monkeypatch.setattr(dgan.report, "write_report", lambda out: out / "report.html")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert len(started_runs) == 1 and "predicting building everywhere: 0.089" in res.output
    assert ("below predicting building everywhere" in res.output) == warned


def test_the_demo_runs_its_nodes_at_its_own_one_d_step_unless_asked_and_refuses_what_a_node_would(
        tmp_path: Path, started_runs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.demo
    import dgan.report

    scored = {"iou": 0.2, "f1": 0.3, "precision": 0.4, "recall": 0.5, "all_building_iou": 0.089}
    monkeypatch.setattr(dgan.demo, "segment_synthetic", lambda out, **kw: scored)
    monkeypatch.setattr(dgan.report, "write_report", lambda out: out / "report.html")
    for extra, steps in (([], "1"), (["--d-steps", "2"], "2"), (["--feedback", "segmentation"], "1")):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / f"d{len(started_runs)}"), *extra])
        assert res.exit_code == 0, res.output
        args = started_runs[-1].node_args
        assert args[args.index("--d-steps") + 1] == steps and started_runs[-1].data is None
    for bad, said in ((["--d-steps", "0"], "--d-steps"), (["--feedback", "segmentation", "--d-steps", "2"],
                                                          "segmentation")):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "bad"), *bad], env={"COLUMNS": "400"})
        assert res.exit_code == 2 and len(started_runs) == 3 and said in res.output, res.output


def test_the_demo_tries_a_plain_and_a_recoloured_segmenter_unless_asked_and_refuses_shares_outside_0_1(
        tmp_path: Path, started_runs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.demo
    import dgan.report

    asked: list[list[float]] = []
    scored = {"iou": 0.2, "f1": 0.3, "precision": 0.4, "recall": 0.5, "all_building_iou": 0.089}
    monkeypatch.setattr(dgan.demo, "segment_synthetic", lambda out, recolour: asked.append(list(recolour)) or scored)
    monkeypatch.setattr(dgan.report, "write_report", lambda out: out / "report.html")
    for extra in ([], ["--seg-recolour", "0"], ["--seg-recolour", "0", "--seg-recolour", "1"]):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / f"d{len(started_runs)}"), *extra])
        assert res.exit_code == 0, res.output
    assert asked == [[0.0, 0.5], [0.0], [0.0, 1.0]]
    scored |= {"recolour": 0.5, "tried": [{"recolour": 0.0, "best_val_iou": 0.02},
                                          {"recolour": 0.5, "best_val_iou": 0.21}]}
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "kept")], env={"COLUMNS": "400"})
    assert "recolour 0: 0.020, recolour 0.5: 0.210; kept recolour 0.5" in res.output, res.output
    for bad in ("1.5", "-0.1", "nan"):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "bad"), "--seg-recolour", bad],
                                 env={"COLUMNS": "400"})
        assert res.exit_code == 2 and "--seg-recolour" in res.output and len(started_runs) == 4, res.output


def test_the_demo_tests_the_segmenter_with_the_best_validation_iou_and_records_every_one_it_tried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import numpy as np

    import dgan.demo
    from dgan.data.scenes import make_scenes

    images, masks = make_scenes(range(4), 16)
    monkeypatch.setattr(dgan.demo, "load_pairs_folder", lambda path, size: type(
        "Pairs", (), {"images": images, "masks": masks, "__len__": lambda self: 4})())
    monkeypatch.setattr(dgan.demo, "make_scenes", lambda seeds, size: (images, masks))
    val_iou = {0.0: 0.1, 0.5: 0.3, 1.0: 0.3}  # 1.0 ties 0.5: the share given first is kept
    monkeypatch.setattr(dgan.demo, "train_segmenter", lambda ims, ms, cfg, val: (
        f"model {cfg.recolour}", {"best_val_iou": val_iou[cfg.recolour], "best_step": 50, "train_seconds": 2.0}))
    tested: list[str] = []
    monkeypatch.setattr(dgan.demo, "predict", lambda model, ims: tested.append(model) or np.zeros(masks.shape))
    out = dgan.demo.segment_synthetic(tmp_path, size=16, test_scenes=4, threads=1, recolour=(0.0, 0.5, 0.5, 1.0))
    assert tested == ["model 0.5"] and out["recolour"] == 0.5 and out["val_iou"] == 0.3
    assert [t["recolour"] for t in out["tried"]] == [0.0, 0.5, 1.0] and out["train_seconds"] == 6.0
    saved = json.loads((tmp_path / "results.json").read_text())["methods"]["dgan"]
    assert saved["recolour"] == 0.5 and [t["best_val_iou"] for t in saved["tried"]] == [0.1, 0.3, 0.3]
