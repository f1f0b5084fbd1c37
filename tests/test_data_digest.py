"""A cached result, a saved central GAN and a finished DGAN training are found by data, pair names and settings;
each also records a digest of the pixels it was made from (a GAN training: of its training pairs alone), so data
changed under the same names is never silently reused, while results from before digests were kept still load."""

from __future__ import annotations

import json
import logging
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest

import dgan.experiment as ex
import dgan.experiment_central as central
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits, cache_key
from dgan.finished_runs import FINISHED
from dgan.provenance import stale_data
from dgan.segment import SegConfig
from tests.test_experiment_reuse import trainings  # noqa: F401  (a fixture)


def _splits() -> Splits:
    ims, masks = make_scenes(range(6), 32)
    pairs = PairSet(ims, masks, [f"p{i}" for i in range(6)], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs.subset([4, 5]), test=pairs.subset([5]), node_parts=[[0, 1, 2], [3, 4, 5]],
                  description={})


def _repainted(splits: Splits, part: str = "train", what: str = "images") -> Splits:
    """The same names, one value changed."""
    pairs = getattr(splits, part)
    arr = getattr(pairs, what).copy()
    arr.flat[7] ^= 1
    return replace(splits, **{part: replace(pairs, **{what: arr})})


def test_the_digest_follows_the_pixels_masks_and_names_of_every_split_and_the_train_digest_the_training_pairs(
        ) -> None:
    base = _splits()
    assert _splits().digest == base.digest  # the same content built again
    changed = [_repainted(base), _repainted(base, "val", "masks"), _repainted(base, "test"),
               replace(base, test=replace(base.test, names=["other"]))]
    digests = {s.digest for s in changed}
    assert base.digest not in digests and len(digests) == len(changed)
    assert [s.train_digest == base.train_digest for s in changed] == [False, True, True, True]
    assert _repainted(base, "train", "masks").train_digest != base.train_digest
    transposed = replace(base, train=replace(base.train, images=np.asfortranarray(base.train.images)))
    assert transposed.digest == base.digest  # the pixels count, not their layout in memory
    assert stale_data(None, base.digest) == "" and stale_data(base.digest, base.digest) == ""
    assert "the data changed" in stale_data(changed[0].digest, base.digest)
    with pytest.raises(FrozenInstanceError):  # the digests are computed once: the pairs cannot change under them
        base.train = changed[0].train  # type: ignore[misc]


def test_a_cached_result_from_other_pixels_is_made_again_and_one_from_before_digests_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, nodes=2, seeds=1, scenes=16, quick=True,
                              partition="iid", threads=1, gan_methods=(), local=(),
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2), cache=tmp_path / "cache")
    ex.run_experiment(cfg)
    newest, older = (tmp_path / "cache" / f"real_all-{k}.json"
                     for k in ex.cache_keys(cfg, ex.make_splits(cfg), "real_all")[:2])
    first = json.loads(newest.read_text())["data_digest"]
    newest.rename(older)  # as stored when keys named the data by its path (the digest recorded inside)
    made = ex.make_splits
    monkeypatch.setattr(ex, "make_splits", lambda c: _repainted(made(c), "test"))  # same names, other pixels
    with caplog.at_level(logging.INFO, logger="dgan.experiment"):
        ex.run_experiment(cfg)
    assert any("is not reused: the data changed" in r.getMessage() for r in caplog.records)
    remade = tmp_path / "cache" / f"real_all-{ex.cache_key(cfg, ex.make_splits(cfg), 'real_all')}.json"
    second = json.loads(remade.read_text())
    assert second["data_digest"] != first  # made again, and recorded with the new digest
    del second["data_digest"]  # as cached before digests were kept
    older.write_text(json.dumps(second))
    remade.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dgan.experiment"):
        ex.run_experiment(cfg)
    assert any("real_all: from cache" in r.getMessage() and "pixels not checked" in r.getMessage()
               for r in caplog.records)
    assert not any("is not reused" in r.getMessage() for r in caplog.records)


def test_a_cached_central_gan_result_is_shown_beside_a_run_without_it_only_when_made_from_these_pixels(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, nodes=2, seeds=1, scenes=16, quick=True,
                              partition="iid", threads=1, gan_methods=(), local=(),
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2), cache=tmp_path / "cache")
    splits = ex.make_splits(cfg)
    path = tmp_path / "cache" / f"central_gan-{cache_key(cfg, splits, 'central_gan', cfg.feedback[0])}.json"
    path.parent.mkdir(parents=True)
    measured = {"iou": 0.4, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9, "gan_seconds": [1.0]}
    path.write_text(json.dumps({**measured, "data_digest": "0" * 24}))
    with caplog.at_level(logging.WARNING, logger="dgan.experiment"):
        assert "central_gan" not in ex.run_experiment(cfg)["methods"]
    assert any("is not reused: the data changed" in r.getMessage() for r in caplog.records)
    path.write_text(json.dumps({**measured, "data_digest": splits.digest}))
    assert ex.run_experiment(cfg)["methods"]["central_gan"]["iou"] == 0.4


def test_a_saved_central_gan_trained_on_other_training_pixels_trains_again(tmp_path: Path) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4,
                              snapshots=2)
    splits = _splits()
    central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path)
    assert central.central_gan_trained(cfg, _repainted(splits, "test"), 0, "adversarial", tmp_path).reused
    saved = central.central_gan_paths(cfg, splits, 0, "adversarial", tmp_path)
    saved[0].rename(saved[1])  # as saved when keys named the data by its path (the digest recorded inside)
    repainted = _repainted(splits)
    assert central.central_gan_paths(cfg, repainted, 0, "adversarial", tmp_path)[1] == saved[1]  # that key
    assert not central.central_gan_trained(cfg, repainted, 0, "adversarial", tmp_path).reused  # cannot tell
    assert central.central_gan_trained(cfg, repainted, 0, "adversarial", tmp_path).reused  # saved under its digest


def test_a_finished_dgan_training_on_other_training_pixels_runs_again_and_one_from_before_digests_is_reused(
        tmp_path: Path, trainings: list) -> None:  # noqa: F811
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    assert ex.dgan_run(cfg, _repainted(splits, "val", "masks"), "async", 0, "adversarial").reused  # not its data
    assert len(trainings) == 1
    assert not ex.dgan_run(cfg, _repainted(splits, "train", "masks"), "async", 0, "adversarial").reused
    assert len(trainings) == 2
    record_path = next((tmp_path / "exp").glob("dgan_*_seed0")) / FINISHED
    record = json.loads(record_path.read_text())
    del record["data_digest"]  # as recorded before digests were kept
    record_path.write_text(json.dumps(record))
    assert ex.dgan_run(cfg, splits, "async", 0, "adversarial").reused and len(trainings) == 2
    record["data_digest"] = None  # an explicit null is no digest either, as everywhere else
    record_path.write_text(json.dumps(record))
    assert ex.dgan_run(cfg, splits, "async", 0, "adversarial").reused and len(trainings) == 2
