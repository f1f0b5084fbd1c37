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
    for bad in ("1.5", "-0.1", "nan"):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "bad"), "--seg-recolour", bad],
                                 env={"COLUMNS": "400"})
        assert res.exit_code == 2 and "--seg-recolour" in res.output and len(started_runs) == 3, res.output
