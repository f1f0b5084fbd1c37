"""`dgan experiment` reuses a DGAN training that finished with the same settings, and only that one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import dgan.experiment as ex
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits
from dgan.finished_runs import FINISHED, launch_fingerprint
from dgan.networks import ModelConfig
from dgan.run import RunConfig
from dgan.training.checkpoints import save_atomic
from dgan.training.generator import GeneratorTrainer, TrainConfig


def _splits() -> Splits:
    ims, masks = make_scenes(range(4), 32)
    pairs = PairSet(ims, masks, ["a", "b", "c", "d"], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0, 1], [2, 3]], description={})


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """Stands in for the processes: records each launch and leaves a checkpoint, as a finished run does."""
    started: list[RunConfig] = []

    def fake_run_local(run: RunConfig, watch: object = None) -> dict[str, object]:
        started.append(run)
        gen = GeneratorTrainer(ModelConfig(image_size=32, g_width=8, d_width=8), TrainConfig(seed=run.seed))
        (run.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_atomic(gen.state(), run.out / "checkpoints" / "latest.pt")
        return {}

    monkeypatch.setattr(ex, "run_local", fake_run_local)
    return started


def test_a_finished_dgan_training_with_the_same_settings_is_loaded_not_run_again(
        tmp_path: Path, trainings: list[RunConfig]) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    first = ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    assert len(trainings) == 1 and first.seconds >= 0 and not first.reused
    again = ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    assert len(trainings) == 1 and again.reused  # loaded from its folder
    assert again.seconds == first.seconds  # the time it took when it ran, not the time to load it
    assert all((a == b).all() for a, b in zip(first.generator.state()["G"].values(),
                                              again.generator.state()["G"].values(), strict=True))
    ex.dgan_run(cfg, splits, "async", 1, "adversarial")  # another GAN seed is another training
    assert len(trainings) == 2


@pytest.mark.parametrize("change", [
    {"lambda_colour": 10.0}, {"gan_steps": 8}, {"ema": 0.999}, {"grad_dtype": "int8"}, {"judged": True},
    {"weighting": "equal"}])
def test_a_changed_setting_trains_afresh_in_the_same_folder(tmp_path: Path, trainings: list[RunConfig],
                                                             change: dict[str, object]) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    ex.dgan_run(replace(cfg, **change), splits, "async", 0, "adversarial")
    assert len(trainings) == 2
    ex.dgan_run(replace(cfg, **change), splits, "async", 0, "adversarial")  # now that one is the finished one
    assert len(trainings) == 2


def test_other_node_data_trains_afresh(tmp_path: Path, trainings: list[RunConfig]) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    ex.dgan_run(cfg, replace(splits, node_parts=[[0], [1, 2, 3]]), "async", 0, "adversarial")
    assert len(trainings) == 2


@pytest.mark.parametrize("damage", ["no record", "torn record", "not a dict", "no seconds", "no checkpoint"])
def test_a_training_that_never_finished_or_lost_its_checkpoint_trains_afresh(
        tmp_path: Path, trainings: list[RunConfig], damage: str) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    folder = trainings[0].out
    record = folder / FINISHED
    if damage == "no record":  # a crash or Ctrl-C before the end leaves no record
        record.unlink()
    elif damage == "torn record":
        record.write_text(record.read_text()[:20])
    elif damage == "not a dict":
        record.write_text(json.dumps([1, 2]))
    elif damage == "no seconds":
        record.write_text(json.dumps({"launch": json.loads(record.read_text())["launch"]}))
    else:
        (folder / "checkpoints" / "latest.pt").unlink()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    assert len(trainings) == 2
    assert json.loads(record.read_text())["launch"] == launch_fingerprint(trainings[1])


def test_a_failed_retraining_leaves_no_record_of_having_finished(tmp_path: Path, trainings: list[RunConfig],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed setting retrains into the folder of a finished training; if that fails, the old record must not
    survive to pass the half-overwritten folder off as the old training, nor as the new one."""
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    record = trainings[0].out / FINISHED
    assert record.exists()
    finish = ex.run_local

    def failing(run: RunConfig, watch: object = None) -> dict[str, object]:
        raise RuntimeError("the generator exited with 1")

    monkeypatch.setattr(ex, "run_local", failing)
    with pytest.raises(RuntimeError):
        ex.dgan_run(replace(cfg, ema=0.999), splits, "async", 0, "adversarial")
    assert not record.exists()
    monkeypatch.setattr(ex, "run_local", finish)
    assert not ex.dgan_run(cfg, splits, "async", 0, "adversarial").reused  # the first settings train again too
    assert len(trainings) == 2


def test_the_fingerprint_ignores_where_and_how_long_but_not_what(tmp_path: Path) -> None:
    run = ex.dgan_launch(ex.ExperimentConfig(out=tmp_path / "a", size=32, nodes=2), _splits(), "async", 0,
                         "adversarial")
    assert launch_fingerprint(run) == launch_fingerprint(replace(run, out=tmp_path / "b", timeout=5.0))
    assert launch_fingerprint(run) != launch_fingerprint(replace(run, node_args=[*run.node_args, "--x"]))


def test_async_beta1_sets_only_the_async_generators_momentum_and_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2)
    plain = ex.dgan_launch(base, _splits(), "async", 0, "adversarial")
    zero = ex.dgan_launch(replace(base, async_beta1=0.0), _splits(), "async", 0, "adversarial")
    sync = ex.dgan_launch(replace(base, async_beta1=0.0), _splits(), "sync", 0, "adversarial")
    beta1 = {name: run.extra_generator_args[run.extra_generator_args.index("--beta1") + 1]
             for name, run in (("plain", plain), ("zero", zero), ("sync", sync))}
    assert beta1 == {"plain": "0.5", "zero": "0.0", "sync": "0.5"}  # sync rounds are never stale
    assert launch_fingerprint(plain) != launch_fingerprint(zero)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ex.ExperimentSetupError, match="async_beta1"):
            replace(base, async_beta1=bad)


def test_the_node_pipeline_reaches_the_run_and_its_fingerprint(tmp_path: Path) -> None:
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2)
    one = ex.dgan_launch(base, _splits(), "async", 0, "adversarial")  # the default: one request in flight
    two = ex.dgan_launch(replace(base, pipeline=2), _splits(), "async", 0, "adversarial")
    assert (one.pipeline, two.pipeline) == (1, 2)  # dgan.run passes it to every node's --pipeline
    assert launch_fingerprint(two) != launch_fingerprint(one)
    with pytest.raises(ex.ExperimentSetupError, match="pipeline"):
        replace(base, pipeline=0)


def test_equal_weighting_reaches_the_dgan_generator_and_size_weighting_adds_no_argument(tmp_path: Path) -> None:
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2)
    size = ex.dgan_launch(base, _splits(), "async", 0, "adversarial").extra_generator_args
    equal = ex.dgan_launch(replace(base, weighting="equal"), _splits(), "async", 0, "adversarial")
    assert "--weighting" not in size  # the default: runs finished before the option keep their fingerprints
    assert equal.extra_generator_args[equal.extra_generator_args.index("--weighting") + 1] == "equal"
    assert ex.cache_key(base, _splits(), "central_gan", "adversarial") == ex.cache_key(
        replace(base, weighting="equal"), _splits(), "central_gan", "adversarial")  # one pooled D: nothing to weigh
    with pytest.raises(ex.ExperimentSetupError, match="weighting"):
        replace(base, weighting="loudest")
