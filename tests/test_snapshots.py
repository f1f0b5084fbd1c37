"""Snapshots of G's weights: which are kept, how a set is drawn across them, and how a run asks for them."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgan import experiment as ex
from dgan.cli import app
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits, cache_key
from dgan.networks import ModelConfig
from dgan.training.checkpoints import load_checkpoint
from dgan.training.generator import GeneratorTrainer, TrainConfig
from dgan.training.snapshots import relative_distance
from tests.conftest import feedback_step

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)
STILL = replace(MODEL, dropout=0.0)  # no noise: an image is a function of the weights and the mask
_PAIRS = PairSet(*make_scenes(range(4), 32), ["a", "b", "c", "d"], {}, ("background", "building"))
SPLITS = Splits(train=_PAIRS, val=_PAIRS, test=_PAIRS, node_parts=[[0, 1], [2, 3]], description={})


def test_snapshots_keep_the_last_k_every_n_steps_with_the_latest_weights_and_survive_a_checkpoint(
        tmp_path: Path) -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(snapshots=2, snapshot_every=2, fake_dtype="float32", lr=1e-2))
    for k in range(5):
        feedback_step(trainer, k)
    assert [s for s, _ in trainer.snaps.kept] == [2, 4]
    assert [s for s, _ in trainer.snaps.members(trainer.step, trainer.G)] == [4, 5]  # step 5 is not kept: it joins
    feedback_step(trainer, 5)
    assert [s for s, _ in trainer.snaps.members(trainer.step, trainer.G)] == [4, 6]
    drift = trainer.snaps.drift(trainer.step, trainer.G)
    assert drift is not None and drift > 0
    trainer.save(tmp_path / "g.pt")
    again = GeneratorTrainer.from_state(load_checkpoint(tmp_path / "g.pt"))
    assert [s for s, _ in again.snaps.kept] == [4, 6]
    assert relative_distance(again.snaps.kept[0][1], trainer.snaps.kept[0][1]) == 0.0
    masks = np.zeros((4, 32, 32), np.uint8)
    assert np.array_equal(again.synthesize(masks, weights="snapshots"), trainer.synthesize(masks, weights="snapshots"))


def test_a_set_draws_mask_i_of_draw_k_from_snapshot_i_plus_k_mod_k() -> None:
    trainer = GeneratorTrainer(STILL, TrainConfig(snapshots=3, snapshot_every=2, fake_dtype="float32", lr=5e-2))
    for k in range(6):
        feedback_step(trainer, k)
    members = trainer.snaps.members(trainer.step, trainer.G)
    assert [s for s, _ in members] == [2, 4, 6]
    masks = np.zeros((7, 32, 32), np.uint8)
    masks[:, :, 16:] = 1
    alone = []  # every mask from each snapshot by itself
    for _, weights in members:
        one = copy.deepcopy(trainer)
        one.G.load_state_dict(weights)
        alone.append(one.synthesize(masks, weights="raw"))
    assert not np.array_equal(alone[0], alone[2])  # the snapshots differ, so the test can tell them apart
    for draw in range(3):
        mixed = trainer.synthesize(masks, weights="snapshots", draw=draw)
        for i in range(len(masks)):
            assert np.array_equal(mixed[i], alone[(i + draw) % 3][i]), (draw, i)
    assert trainer.weights_available("auto") == "snapshots"
    assert np.array_equal(trainer.synthesize(masks, weights="raw"), alone[2])  # the latest is the raw weights


def test_without_snapshots_the_choice_falls_back_and_bad_counts_are_refused(tmp_path: Path) -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32"))
    assert trainer.weights_available("snapshots") == "raw"
    masks = np.zeros((2, 32, 32), np.uint8)
    assert np.array_equal(trainer.synthesize(masks, weights="snapshots", draw=1), trainer.synthesize(masks))
    for bad in ({"snapshots": -1}, {"snapshots": 1}, {"snapshots": 2, "snapshot_every": 0}):
        with pytest.raises(ValueError, match="snapshots must be >= 0"):
            TrainConfig(**bad)
    for count in (-2, 1):
        with pytest.raises(ex.ExperimentSetupError, match="snapshots must be >= 0"):
            ex.ExperimentConfig(out=tmp_path, snapshots=count)
    res = CliRunner().invoke(app, ["generator", "--out", str(tmp_path / "g"), "--synthesis-weights", "snapshots"])
    assert res.exit_code == 2 and "needs --snapshots" in res.output
    res = CliRunner().invoke(app, ["generator", "--out", str(tmp_path / "g"), "--snapshots", "1"])
    assert res.exit_code == 2 and "snapshots must be >= 0 and not 1" in " ".join(res.output.split())


def test_snapshots_count_back_from_the_planned_last_step_and_an_early_stop_still_ends_on_the_latest_weights(
        tmp_path: Path) -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(steps=7, snapshots=3, snapshot_every=3, ema=0.9,
                                                  fake_dtype="float32", lr=1e-2))
    assert trainer.weights_available("auto") == "ema"  # nothing to spread a set over yet: the EMA, as before
    feedback_step(trainer, 0)
    assert [s for s, _ in trainer.snaps.kept] == [1] and trainer.weights_available("auto") == "ema"
    for k in range(1, 5):
        feedback_step(trainer, k)
    assert [s for s, _ in trainer.snaps.members(trainer.step, trainer.G)] == [1, 4, 5]  # stopped at step 5
    assert trainer.weights_available("auto") == trainer.weights_available("judged") == "snapshots"
    for k in range(5, 7):
        feedback_step(trainer, k)
    assert [s for s, _ in trainer.snaps.members(trainer.step, trainer.G)] == [1, 4, 7]  # 7 is the planned last
    trainer.save(tmp_path / "g.pt")
    state = load_checkpoint(tmp_path / "g.pt")
    del state["G_snapshots"]  # a checkpoint from before snapshots: the EMA synthesises, as it did
    again = GeneratorTrainer.from_state(state)
    assert again.weights_available("auto") == "ema"


def test_the_central_gan_keeps_its_snapshots_over_its_second_half(tmp_path: Path) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, g_width=8, d_width=8, gan_steps=8, snapshots=2)
    gen = ex.central_gan(cfg, _PAIRS, seed=0, mode="adversarial")
    assert [s for s, _ in gen.snaps.members(gen.step, gen.G)] == [6, 8]


def test_the_experiment_gives_both_gans_snapshots_over_their_second_half_and_keys_its_cache_by_them(
        tmp_path: Path) -> None:
    on = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, gan_steps=800)  # the default: 4 snapshots
    base = replace(on, snapshots=0)
    assert on.snapshots == 4 and base.snapshot_args(800) == {}
    assert on.snapshot_args(800) == {"snapshots": 4, "snapshot_every": 100}  # steps 500, 600, 700 and 800
    args = ex.dgan_launch(on, SPLITS, "async", 0, "adversarial").extra_generator_args
    assert "--snapshots=4" in args and "--snapshot-every=100" in args
    sync = ex.dgan_launch(on, SPLITS, "sync", 0, "adversarial").extra_generator_args
    assert "--snapshot-every=50" in sync  # 400 rounds of 2 nodes
    assert not any(a.startswith("--snapshot") for a in ex.dgan_launch(base, SPLITS, "async", 0,
                                                                       "adversarial").extra_generator_args)
    assert cache_key(base, SPLITS, "central_gan", "adversarial") != cache_key(on, SPLITS, "central_gan", "adversarial")
    assert cache_key(base, SPLITS, "real_all", "adversarial") == cache_key(on, SPLITS, "real_all", "adversarial")


def test_an_experiment_with_snapshots_also_measures_the_same_trainings_last_weights(tmp_path: Path) -> None:
    from dgan.experiment import run_experiment
    from dgan.segment import SegConfig

    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=4, g_width=8, d_width=8, nodes=2, seeds=1,
                              seg=SegConfig(width=8, depth=3, steps=4, eval_every=2), samples_per_mask=2, scenes=16,
                              quick=True, partition="iid", threads=1, gan_methods=("central_gan",), snapshots=2,
                              local=())
    results = run_experiment(cfg)
    central, last = results["methods"]["central_gan"], results["methods"]["central_gan_last"]
    assert central["synthesis_weights"] == ["snapshots 3,4"] and "alternates" not in central
    assert last["alternate_of"] == "central_gan" and last["feedback"] == central["feedback"]
    assert list(results["methods"]).index("central_gan_last") == list(results["methods"]).index("central_gan") + 1
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| central_gan_last |" in md and "their sets from the last weights alone" in md
    again = run_experiment(cfg)  # the central GAN from the cache: its last weights' figures come back with it
    assert again["methods"]["central_gan_last"] == last


def test_with_ema_and_snapshots_the_experiment_measures_the_moving_average_beside_and_keys_its_cache_by_it(
        tmp_path: Path) -> None:
    from dgan.experiment import make_splits, run_experiment
    from dgan.segment import SegConfig

    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=4, g_width=8, d_width=8, nodes=2, seeds=1,
                              seg=SegConfig(width=8, depth=3, steps=4, eval_every=2), samples_per_mask=1, scenes=16,
                              quick=True, partition="iid", threads=1, gan_methods=("central_gan",), ema=0.9,
                              local=())
    methods = run_experiment(cfg)["methods"]
    assert methods["central_gan"]["synthesis_weights"][0].startswith("snapshots ")  # the snapshots come first
    assert methods["central_gan_ema"]["alternate_of"] == "central_gan" and "central_gan_last" in methods
    assert "- central_gan_ema: the same GAN trainings as central_gan, their sets from the moving average" in (
        tmp_path / "exp" / "results.md").read_text()
    splits = make_splits(cfg)
    assert cache_key(cfg, splits, "central_gan", "adversarial") != cache_key(
        replace(cfg, ema=0.0), splits, "central_gan", "adversarial")
