"""`dgan bench variety`: dropout draws per mask, validation IoU and how much the draws differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.variety import draw_differences, experiment_settings
from dgan.cli import app
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, TrainConfig


def _generator(dropout: float) -> GeneratorTrainer:
    return GeneratorTrainer(ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, dropout=dropout),
                            TrainConfig(fake_dtype="float32"))


def test_draws_differ_only_through_dropout_and_an_empty_mask_varies_only_by_its_draws() -> None:
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[:3, 8:20, 8:20] = 1  # three masks with a building, three empty ones
    with_dropout = draw_differences(_generator(0.5), masks)
    without = draw_differences(_generator(0.0), masks)
    assert with_dropout["draw_diff"] > 0 and with_dropout["empty_draw_diff"] > 0
    assert without["draw_diff"] == 0 and without["empty_draw_diff"] == 0  # same input, same weights: same image
    assert without["mask_diff"] > 0  # ... while different masks still give different images
    assert with_dropout["empty_masks"] == 3 and with_dropout["masks"] == 6


def test_bench_variety_writes_one_row_per_set_and_seed_and_refuses_bad_settings(tmp_path: Path) -> None:
    ckpt = tmp_path / "g.pt"
    _generator(0.5).save(ckpt)
    out = tmp_path / "v.json"
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "variety", str(ckpt), "--quick", "--seg-steps", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [r["draws"] for r in doc["rows"]] == [1, 2] and doc["rows"][1]["pairs"] == 2 * doc["rows"][0]["pairs"]
    assert all(0.0 <= r["val_iou"] <= 1.0 and r["seg_steps"] == 4 for r in doc["rows"])
    assert doc["differences"][0]["draw_diff"] > 0 and doc["differences"][0]["weights"] == "raw"
    bad = runner.invoke(app, ["bench", "variety", str(ckpt), "--quick", "--draws", "0"])
    assert bad.exit_code == 2 and "draws >= 1" in bad.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    refused = runner.invoke(app, ["bench", "variety", str(junk), "--quick"], env={"COLUMNS": "400"})
    assert refused.exit_code == 2 and "cannot be read" in refused.output


def test_the_split_and_segmenter_come_from_the_experiment_that_trained_the_generator(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp" / "dgan_async_adversarial_d2_seed0" / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert experiment_settings(ckpt, None) == ("tile=8", "", {})  # no results.json: Dubai's default split
    (tmp_path / "exp" / "results.json").write_text(json.dumps({"config": {
        "test": "tile=5", "groups": "7|2,4|8|1,3,6", "seg": {"width": 16, "standardize": True, "steps": 700}}}))
    assert experiment_settings(ckpt, None) == ("tile=5", "7|2,4|8|1,3,6", {"width": 16, "standardize": True})
    assert experiment_settings(ckpt, "tile=5")[0] == "tile=5"
    with pytest.raises(ValueError, match="trained with the test split 'tile=5'"):
        experiment_settings(ckpt, "tile=8")  # its test tiles would be trained on and validated against


def test_the_bench_measures_dropout_alone_on_a_generator_with_snapshots(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.variety as variety
    from tests.conftest import feedback_step

    trainer = GeneratorTrainer(ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2),
                               TrainConfig(snapshots=2, snapshot_every=2, fake_dtype="float32", lr=5e-2))
    for k in range(4):
        feedback_step(trainer, k)
    assert trainer.weights_available("auto") == "snapshots"  # draw k of a set would come from another snapshot
    ckpt = tmp_path / "g.pt"
    trainer.save(ckpt)
    asked: list[str] = []
    real = variety.synthesize_set

    def spy(*args: object, weights: str = "auto", **kwargs: object) -> object:
        asked.append(weights)
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(variety, "synthesize_set", spy)
    out = tmp_path / "v.json"
    result = CliRunner().invoke(app, ["bench", "variety", str(ckpt), "--quick", "--seg-steps", "2", "--json",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert asked == ["raw", "raw"]  # 1 and 2 draws per mask, both from the last weights
    assert json.loads(out.read_text())["differences"][0]["weights"] == "raw"
