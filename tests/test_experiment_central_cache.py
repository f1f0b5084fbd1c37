"""`dgan experiment` keeps its central GAN trainings apart from how their sets are scored, so a rerun with other
segmenters, more segmentation seeds or another jitter loads the generators instead of training them again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import dgan.experiment_central as central
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment import ExperimentConfig, synthesize_set
from dgan.experiment_splits import Splits, cache_key, gan_training_key
from dgan.provenance import code_version
from dgan.segment import SegConfig


def _splits() -> Splits:
    ims, masks = make_scenes(range(6), 32)
    pairs = PairSet(ims, masks, [f"p{i}" for i in range(6)], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0, 1, 2], [3, 4, 5]], description={})


def _cfg(tmp_path: Path) -> ExperimentConfig:
    return ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4, snapshots=2)


def test_a_saved_central_gan_is_loaded_and_synthesises_the_very_same_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, splits = _cfg(tmp_path), _splits()
    trained: list[int] = []
    train = central.central_gan
    monkeypatch.setattr(central, "central_gan", lambda *a: trained.append(a[2]) or train(*a))
    first = central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path)
    assert trained == [0] and not first.reused and first.seconds > 0
    again = central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path)
    assert trained == [0] and again.reused and again.seconds == pytest.approx(first.seconds)
    assert again.made_by == code_version() and first.made_by is None  # the saved file records its code
    a, b = (synthesize_set(g.generator, splits.train.masks, 2) for g in (first, again))
    assert np.array_equal(a.images, b.images)  # snapshots and all: the set does not know it was loaded
    central.central_gan_trained(cfg, splits, 1, "adversarial", tmp_path)  # another seed is another training
    assert trained == [0, 1]


def test_the_saved_central_gan_is_keyed_by_the_gan_not_by_its_scoring(tmp_path: Path) -> None:
    cfg, splits = _cfg(tmp_path), _splits()
    key = gan_training_key(cfg, splits, "adversarial")
    scoring = [replace(cfg, seeds=4), replace(cfg, gan_seeds=2), replace(cfg, samples_per_mask=3),
               replace(cfg, synthetic_photometric=0.5), replace(cfg, seg=SegConfig(steps=300, photometric=0.2)),
               replace(cfg, local=("mixed",)), replace(cfg, out=tmp_path / "other")]
    assert all(gan_training_key(c, splits, "adversarial") == key for c in scoring)
    assert all(cache_key(c, splits, "central_gan", "adversarial") != cache_key(cfg, splits, "central_gan",
                                                                               "adversarial") for c in scoring[:5])
    training = [replace(cfg, gan_steps=8), replace(cfg, snapshots=0), replace(cfg, ema=0.999),
                replace(cfg, lambda_colour=10.0), replace(cfg, size=64), replace(cfg, oasis_optim=True),
                replace(cfg, seg=SegConfig(positive_share=0.5))]
    assert len({gan_training_key(c, splits, "adversarial") for c in training} | {key}) == len(training) + 1
    assert gan_training_key(cfg, splits, "l1") != key
    fewer = replace(splits, train=splits.train.subset([0, 1, 2, 3]))
    assert gan_training_key(cfg, fewer, "adversarial") != key


def test_an_unreadable_saved_central_gan_trains_again_and_is_replaced(tmp_path: Path) -> None:
    cfg, splits = _cfg(tmp_path), _splits()
    path = central.central_gan_path(cfg, splits, 0, "adversarial", tmp_path)
    path.write_bytes(b"not a checkpoint")
    got = central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path)
    assert not got.reused
    assert central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path).reused


def test_a_saved_training_of_another_seed_or_model_or_with_bad_settings_trains_again(tmp_path: Path) -> None:
    import torch

    cfg, splits = _cfg(tmp_path), _splits()
    central.central_gan_trained(cfg, splits, 1, "adversarial", tmp_path)
    seed1 = central.central_gan_path(cfg, splits, 1, "adversarial", tmp_path)
    seed0 = central.central_gan_path(cfg, splits, 0, "adversarial", tmp_path)
    seed0.write_bytes(seed1.read_bytes())  # a file under the wrong name: another seed's training
    assert not central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path).reused
    assert torch.load(seed0, weights_only=True)["train"]["seed"] == 0  # replaced by the right one
    state = torch.load(seed1, weights_only=True)
    for bad in ({**state, "train": 5}, {**state, "model": {**state["model"], "g_width": 16}}, {"G": {}, "step": 4}):
        torch.save(bad, seed1)
        assert not central.central_gan_trained(cfg, splits, 1, "adversarial", tmp_path).reused


def test_a_training_that_cannot_be_saved_is_used_all_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(central, "save_atomic", full)
    got = central.central_gan_trained(_cfg(tmp_path), _splits(), 0, "adversarial", tmp_path)
    assert not got.reused and got.generator.step == 4


def test_a_loaded_central_gan_goes_on_the_experiments_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, splits = _cfg(tmp_path), _splits()
    central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path)
    asked: list[object] = []
    load = central.GeneratorTrainer.from_state
    monkeypatch.setattr(central.GeneratorTrainer, "from_state",
                        lambda state, device=None: asked.append(device) or load(state, device=device))
    assert central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path).reused
    assert asked == ["cpu"]
