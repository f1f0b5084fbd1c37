"""Cache keys name the data by the digest of its pixels, so a result is found whatever path leads to the data;
results stored under the older keys, which named the data by its path as typed, are still found by any spelling
of that path, and still checked against the digest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import dgan.experiment as ex
import dgan.experiment_central as central
from dgan.experiment_splits import Splits, cache_key, cache_keys, cached_result, gan_training_key, gan_training_keys
from dgan.training.checkpoints import load_checkpoint, save_atomic
from tests.test_data_digest import _repainted, _splits


def _cfg(data: Path | None, tmp_path: Path) -> ex.ExperimentConfig:
    return ex.ExperimentConfig(out=tmp_path / "exp", size=32, data=data)


def test_the_data_is_named_by_its_pixels_so_any_path_to_it_gives_the_same_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits = _splits()
    typed = [Path("dubai"), tmp_path / "dubai", tmp_path / "moved" / "dubai", Path("./moved/../dubai")]
    for method, mode in (("real_all", ""), ("real_partial", ""), ("central_gan", "adversarial")):
        assert len({cache_key(_cfg(p, tmp_path), splits, method, mode) for p in typed}) == 1
        assert cache_key(_cfg(typed[0], tmp_path), _repainted(splits, "test"), method, mode) != cache_key(
            _cfg(typed[0], tmp_path), splits, method, mode)  # other pixels, other key
    assert len({gan_training_key(_cfg(p, tmp_path), splits, "adversarial") for p in typed}) == 1
    # a GAN training depends on its training pairs alone
    assert gan_training_key(_cfg(typed[0], tmp_path), _repainted(splits, "test"), "adversarial") == \
        gan_training_key(_cfg(typed[0], tmp_path), splits, "adversarial")
    assert gan_training_key(_cfg(typed[0], tmp_path), _repainted(splits), "adversarial") != \
        gan_training_key(_cfg(typed[0], tmp_path), splits, "adversarial")


def test_the_older_keys_are_the_ones_results_were_stored_under_before_digests_named_the_data(tmp_path: Path) -> None:
    # computed by the code at 0ddcef4, which named the data by its path as typed: results stored then are found
    splits = _splits()
    for data, real_all, central_gan, training in ((None, "11381c98fde2ede4", "03ca33348a2a3de0", "1cbb11b8f1fa29f4"),
                                                  (Path("data/dubai"), "5e7e082d63c420a4", "66d212cf15f8068d",
                                                   "25a69d34e4c0f57a")):
        cfg = _cfg(data, tmp_path)
        assert cache_keys(cfg, splits, "real_all")[1] == real_all
        assert cache_keys(cfg, splits, "central_gan", "adversarial")[1] == central_gan
        assert gan_training_keys(cfg, splits, "adversarial")[1] == training


def _result_paths(cfg: ex.ExperimentConfig, splits: Splits, root: Path) -> list[Path]:
    return [root / f"real_all-{k}.json" for k in cache_keys(cfg, splits, "real_all")]


def test_a_result_stored_under_another_spelling_of_the_path_is_found_where_its_digest_agrees_and_moves_to_the_digest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits = _splits()
    relative, absolute = _cfg(Path("dubai"), tmp_path), _cfg(tmp_path / "dubai", tmp_path)
    for stored_by, found_by in ((relative, absolute), (absolute, relative)):
        old = _result_paths(stored_by, splits, tmp_path)[1]  # where the code before digests stored it
        paths = _result_paths(found_by, splits, tmp_path)
        assert old in paths[2:]  # another spelling: found, but only with the digest to check
        old.write_text(json.dumps({"iou": 0.4}))
        assert cached_result(paths, splits, "real_all") is None  # no digest: it may have been other data
        old.write_text(json.dumps({"iou": 0.4, "data_digest": _repainted(splits).digest}))
        assert cached_result(paths, splits, "real_all") is None  # other pixels
        old.write_text(json.dumps({"iou": 0.4, "data_digest": splits.digest}))
        assert cached_result(paths, splits, "real_all")["iou"] == 0.4  # type: ignore[index]
        assert json.loads(paths[0].read_text())["iou"] == 0.4  # stored under the digest's key from now on
        old.unlink()
        paths[0].unlink()


def test_a_result_from_before_digests_is_still_reused_under_the_path_exactly_as_typed(tmp_path: Path) -> None:
    splits, cfg = _splits(), _cfg(Path("data/dubai"), tmp_path)
    paths = _result_paths(cfg, splits, tmp_path)
    paths[1].write_text(json.dumps({"iou": 0.3}))
    assert cached_result(paths, splits, "real_all")["iou"] == 0.3  # type: ignore[index]
    assert not paths[0].exists()  # unchecked: it stays under the path's key


def test_the_digest_key_comes_first_and_a_broken_file_there_is_passed_over(tmp_path: Path) -> None:
    splits, cfg = _splits(), _cfg(Path("data/dubai"), tmp_path)
    paths = _result_paths(cfg, splits, tmp_path)
    paths[0].write_text(json.dumps({"iou": 0.5, "data_digest": splits.digest}))
    paths[1].write_text(json.dumps({"iou": 0.3, "data_digest": splits.digest}))
    assert cached_result(paths, splits, "real_all")["iou"] == 0.5  # type: ignore[index]
    paths[0].write_text("{not json")
    assert cached_result(paths, splits, "real_all")["iou"] == 0.3  # type: ignore[index]
    assert json.loads(paths[0].read_text())["iou"] == 0.3  # the broken file replaced by the checked one


def test_a_central_gan_saved_under_the_older_key_loads_and_one_trained_now_is_saved_under_the_digest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits: Splits = _splits()
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4,
                              data=Path("dubai"))
    newest, older = central.central_gan_paths(cfg, splits, 0, "adversarial", tmp_path)[:2]
    assert not central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path).reused
    assert newest.exists() and not older.exists()
    newest.rename(older)  # as a training saved before digests named the data (its digest recorded inside)
    elsewhere = replace(cfg, data=tmp_path / "dubai")  # another spelling: the recorded digest is checked
    assert older in central.central_gan_paths(elsewhere, splits, 0, "adversarial", tmp_path)[2:]
    assert central.central_gan_trained(elsewhere, splits, 0, "adversarial", tmp_path).reused
    assert newest.exists() and newest.stat().st_ino == older.stat().st_ino  # the digest's key links to it
    newest.unlink()
    state = load_checkpoint(older)
    del state["data_digest"]  # saved before digests were kept
    save_atomic(state, older)
    assert not central.central_gan_trained(elsewhere, splits, 0, "adversarial", tmp_path).reused
    newest.unlink()
    assert central.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path).reused  # as typed: reused
