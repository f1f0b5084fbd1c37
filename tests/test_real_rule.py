"""The update-rule bench's `real` rule: a real run scored like the simulations, with the judges' late verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.real_rule import judge_agreement, late_verdicts, rank_correlation, real_row
from dgan.experiment import ExperimentConfig
from dgan.segment import SegConfig
from nodes.run_outputs import FEEDBACK_COLUMNS


def _write_run(run: Path, rows: list[list[object]], columns: list[str] = FEEDBACK_COLUMNS) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "feedback.json").write_text(json.dumps({"columns": columns, "rows": rows}))


def _row(node: str, step: int, label: float | None, transfer: float | None) -> list[object]:
    return [0.0, node, step, 3, 8, 0.1, 0.2, 1.0, None, 7, label, transfer]


def test_late_verdicts_average_each_node_over_the_second_half_then_the_nodes(tmp_path: Path) -> None:
    _write_run(tmp_path, [_row("a", 10, 0.9, 0.9),  # first half: left out
                          _row("a", 60, 0.2, None), _row("a", 80, 0.4, 0.1), _row("a", 90, 0.6, None),
                          _row("b", 100, 0.1, 0.3), _row("b", 70, None, None)])
    late = late_verdicts(tmp_path)
    assert late["label_iou_late"] == pytest.approx((0.4 + 0.1) / 2)  # a: 0.4 over three, b: 0.1 (a fast node
    assert late["transfer_iou_late"] == pytest.approx((0.1 + 0.3) / 2)  # does not outweigh a slow one)


def test_late_verdicts_of_a_run_from_before_a_judge_existed_are_none(tmp_path: Path) -> None:
    old = FEEDBACK_COLUMNS[:-1]  # no transfer_iou column
    _write_run(tmp_path, [_row("a", 5, 0.3, None)[:-1]], old)
    assert late_verdicts(tmp_path) == {"label_iou_late": 0.3, "transfer_iou_late": None}


def test_rank_correlation_handles_ties_constants_and_too_few_runs() -> None:
    assert rank_correlation([0.1, 0.2, 0.3], [1, 2, 3]) == pytest.approx(1.0)
    assert rank_correlation([0.1, 0.2, 0.3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.6]) == pytest.approx(0.9487, abs=1e-3)
    assert rank_correlation([0.1, 0.2], [1, 2]) is None
    assert rank_correlation([0.1, 0.2, 0.3], [0.0, 0.0, 0.0]) is None  # a judge that said nothing ranks nothing
    rows = [{"val_iou_raw": v, "label_iou_late": lab, "transfer_iou_late": t}
            for v, lab, t in ((0.1, 0.3, 0.0), (0.2, 0.2, 0.05), (0.3, 0.1, None), (0.4, 0.0, 0.1))]
    assert judge_agreement(rows) == {"label_iou": pytest.approx(-1.0), "transfer_iou": pytest.approx(1.0)}


@pytest.mark.parametrize("name", ["real", "real-p1"])
def test_real_rules_run_a_real_training_and_score_it_as_the_simulations(tmp_path: Path, name: str) -> None:
    from benchmarks.update_rule import RULES

    rule = RULES[name]
    cfg = ExperimentConfig(out=tmp_path, size=32, scenes=48, quick=True)
    row = real_row(cfg, seed=0, feedbacks=16, feedback="adversarial", ema=0.9, seg_steps=10, name=name,
                   pipeline=rule.pipeline, snapshots=rule.snapshots)
    assert row["rule"] == name and row["steps"] == 16 and row["gan_seconds"] > 0
    assert 0.0 <= row["val_iou_raw"] <= 1.0 and 0.0 <= row["val_iou_ema"] <= 1.0
    assert ("val_iou_snapshots" in row) == (name == "real-p1")  # the snapshots are scored where G kept them
    if name == "real-p1":
        assert 0.0 <= row["val_iou_snapshots"] <= 1.0
    assert row["staleness_mean"] >= 0 and row["dropped_stale"] >= 0
    assert {"label_iou_late", "transfer_iou_late", "transfer_iou_alarms"} <= set(row)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[ExperimentConfig]:
    """The settings each real training is started with; the training itself is stopped before it starts."""
    import benchmarks.real_rule as rr

    seen: list[ExperimentConfig] = []

    def capture(cfg: ExperimentConfig, *args: object) -> None:
        seen.append(cfg)
        raise RuntimeError("captured")

    monkeypatch.setattr(rr, "dgan_run", capture)
    return seen


def test_the_real_rule_keeps_two_requests_in_flight_and_the_last_weights_whatever_the_experiment_defaults(
        tmp_path: Path, launches: list[ExperimentConfig]) -> None:
    from benchmarks.update_rule import RULES

    seen = launches
    cfg = ExperimentConfig(out=tmp_path, size=32, scenes=24, quick=True)
    assert (cfg.pipeline, cfg.snapshots) == (1, 4)  # the experiment's defaults ...
    with pytest.raises(RuntimeError, match="captured"):
        real_row(cfg, seed=0, feedbacks=4, feedback="adversarial", ema=0.0, seg_steps=2)
    assert (seen[0].pipeline, seen[0].snapshots) == (2, 0) == (RULES["real"].pipeline, 0)  # ... not the real rule's


def test_the_real_p1_rule_runs_dgan_as_the_experiment_does_twin_of_async_p1_f16(
        tmp_path: Path, launches: list[ExperimentConfig]) -> None:
    import benchmarks.update_rule as ur

    seen = launches
    with pytest.raises(RuntimeError, match="captured"):
        ur.run_update_rule_benchmark(None, True, None, ["real-p1"], ["scenes"], 1, 4, "adversarial", 32, [1.0],
                                     0.0, jobs=1)
    experiment = ExperimentConfig(out=tmp_path)
    assert (seen[0].pipeline, seen[0].snapshots) == (experiment.pipeline, experiment.snapshots) == (1, 4)
    twin, ran = ur.RULES["async-p1-f16"], seen[0]  # what the real run was started with, against its simulated twin
    assert (twin.pipeline, twin.snapshots, twin.grad_dtype, twin.fake_dtype, twin.update_every, twin.weighting) == \
        (ran.pipeline, ran.snapshots, ran.grad_dtype, ran.fake_dtype, ran.update_every, ran.weighting)


def test_score_weights_averages_the_segmentation_seeds_and_keeps_each(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import benchmarks.real_rule as rr

    splits = SimpleNamespace(val=SimpleNamespace(images=np.zeros(1), masks=np.zeros(1)),
                             train=SimpleNamespace(masks=np.zeros(1)))
    made: list[str] = []

    def synthesize(gen: object, masks: object, n: int, weights: str) -> SimpleNamespace:
        made.append(weights)
        return SimpleNamespace(images=weights, masks=None)

    def segmenter(images: str, masks: object, cfg: SegConfig, val: object) -> tuple[None, dict[str, float]]:
        return None, {"best_val_iou": {"raw": 0.2, "snapshots": 0.4}[images] + cfg.seed / 10}

    monkeypatch.setattr(rr, "synthesize_set", synthesize)
    monkeypatch.setattr(rr, "train_segmenter", segmenter)
    one = rr.score_weights(None, splits, 2, ("raw", "snapshots"), seg_steps=5)  # type: ignore[arg-type]
    assert one == {"val_iou_raw": 0.2, "val_iou_snapshots": 0.4}  # seed 0 alone: the rows measured before
    three = rr.score_weights(None, splits, 2, ("raw", "snapshots"), seg_steps=5, seg_seeds=3)  # type: ignore[arg-type]
    assert three["val_iou_raw"] == pytest.approx(0.3) and three["val_iou_snapshots_by_seg_seed"] == [0.4, 0.5, 0.6]
    assert made == ["raw", "snapshots"] * 2  # one set per weights, however many segmenters score it
    with pytest.raises(ValueError, match="at least one"):
        rr.score_weights(None, splits, 2, ("raw",), seg_steps=5, seg_seeds=0)  # type: ignore[arg-type]


def test_bench_update_rule_refuses_zero_segmentation_seeds_in_one_line() -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    res = CliRunner().invoke(app, ["bench", "update-rule", "--seg-seeds", "0"])
    assert res.exit_code == 2 and "must be >= 1, got 0" in res.output


def test_bench_score_run_scores_a_finished_generator_as_the_rules_are_scored(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benchmarks.real_rule import score_weights
    from dgan.cli import app
    from dgan.experiment import make_splits
    from dgan.networks import ModelConfig
    from dgan.training.checkpoints import load_checkpoint
    from dgan.training.generator import GeneratorTrainer, TrainConfig

    gen = GeneratorTrainer(ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8),
                           TrainConfig(fake_dtype="float32"))
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    gen.save(ckpt)
    out = tmp_path / "scored.json"
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "score-run", str(ckpt), "--weights", "raw", "--weights", "snapshots",
                              "--seg-steps", "3", "--seg-seeds", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["runs"][0]
    assert row["weights_used"] == {"raw": "raw", "snapshots": "raw"}  # no snapshots kept: what stood in is said
    assert len(row["val_iou_raw_by_seg_seed"]) == 2 and 0.0 <= row["val_iou_raw"] <= 1.0
    cfg = ExperimentConfig(out=tmp_path, size=32)  # the same scorer as the rules': the same figures
    same = score_weights(GeneratorTrainer.from_state(load_checkpoint(ckpt)), make_splits(cfg), cfg.samples_per_mask,
                         ("raw",), 3, 2)
    assert same["val_iou_raw_by_seg_seed"] == row["val_iou_raw_by_seg_seed"]
    bad = runner.invoke(app, ["bench", "score-run", str(ckpt), "--weights", "best"], env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "weights among raw, ema, snapshots (got best)" in bad.output

