"""Department models (dgan_local) share their synthetic stage, and segmenters on synthetic images may be jittered
apart from those on real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dgan.experiment as ex
import dgan.segment as seg
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits, cache_key
from dgan.experiment_tables import jitter_line
from dgan.segment import SegConfig, predict, synthetic_stage, train_local


def _splits() -> Splits:
    ims, masks = make_scenes(range(8), 32)
    pairs = PairSet(ims, masks, [f"p{i}" for i in range(8)], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs.subset([6, 7]), test=pairs.subset([6, 7]),
                  node_parts=[[0, 1, 2], [3, 4, 5]], description={})


@pytest.mark.parametrize("how", ["pretrain", "finetune", "replay"])
def test_a_shared_synthetic_stage_gives_the_same_department_model_as_training_it_again(how: str) -> None:
    syn = make_scenes(range(100, 108), 32)
    own = make_scenes(range(8), 32)
    val = make_scenes(range(900, 904), 32)
    cfg = SegConfig(width=8, depth=3, steps=12, eval_every=4)
    alone, info = train_local(syn, own, cfg, val=val, how=how)
    stage = synthetic_stage(syn, cfg, val, how)
    shared, shared_info = train_local(syn, own, cfg, val=val, how=how, pretrained=stage)
    assert np.array_equal(predict(alone, val[0]), predict(shared, val[0]))
    assert shared_info["best_val_iou"] == info["best_val_iou"]
    assert shared_info["train_seconds"] > stage[1]["train_seconds"]  # what a department at home would spend
    again, _ = train_local(syn, own, cfg, val=val, how=how, pretrained=stage)  # a second department, same stage
    assert np.array_equal(predict(again, val[0]), predict(alone, val[0]))
    with pytest.raises(ValueError, match="mixed has no stages"):
        synthetic_stage(syn, cfg, val, "mixed")


def test_the_experiment_trains_the_synthetic_stage_once_per_seed_for_all_departments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = _splits()
    sets = [splits.train.subset([0, 1, 2, 3]), splits.train.subset([4, 5, 6, 7])]
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, synthetic_photometric=0.5, local_photometric=0.3,
                              seg=SegConfig(width=8, depth=3, steps=4, eval_every=2))
    calls: list[tuple[object, ...]] = []
    stage, local = seg.synthetic_stage, seg.train_local
    monkeypatch.setattr(ex, "synthetic_stage", lambda *a, **k: calls.append(
        ("stage", a[1].seed, a[1].photometric)) or stage(*a, **k))
    monkeypatch.setattr(ex, "train_local", lambda *a, **k: calls.append(
        ("local", k["pretrained"] is not None, a[2].photometric, k["real_photometric"])) or local(*a, **k))
    per_node = ex.department_models(cfg, splits, sets, [0, 1], "pretrain")
    assert sorted(per_node) == ["node0", "node1"]
    # once per seed, not per department; jittered as department stages are (not as GAN sets alone), the own
    # pairs as real ones
    assert [c for c in calls if c[0] == "stage"] == [("stage", 0, 0.3), ("stage", 1, 0.3)]
    assert [c for c in calls if c[0] == "local"] == [("local", True, 0.3, 0.0)] * 4
    assert [r["gan_seed"] for r in per_node["node1"]["seeds"]] == [0, 1]
    assert all(isinstance(r["synthetic_stage_only"], bool) for r in per_node["node0"]["seeds"])  # recorded per model
    calls.clear()
    ex.department_models(cfg, splits, sets, [0], "mixed")  # mixed batches: no stage to share
    assert calls == [("local", False, 0.3, 0.0)] * 2
    calls.clear()
    default = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, synthetic_photometric=0.5,
                                  seg=SegConfig(width=8, depth=3, steps=4, eval_every=2, photometric=0.1))
    ex.department_models(default, splits, sets, [0], "pretrain")  # by default the stage is jittered as real pairs
    assert calls[0] == ("stage", 0, 0.1) and calls[1] == ("local", True, 0.1, 0.1)


def test_sharing_the_stage_leaves_every_department_as_training_it_alone(tmp_path: Path) -> None:
    splits = _splits()
    sets = [splits.train.subset([0, 1, 2, 3])]
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, seg=SegConfig(width=8, depth=3, steps=8, eval_every=2))
    shared = ex.department_models(cfg, splits, sets, [0], "pretrain")
    for k, part in enumerate(splits.node_parts):  # each department on its own, its stage trained for it alone
        alone = ex.evaluate_training_set(cfg, sets[0], splits, 0, own=splits.train.subset(part), how="pretrain")
        got = shared[f"node{k}"]["seeds"][0]
        assert (got["iou"], got["best_val_iou"], got["best_step"]) == (
            alone["iou"], alone["best_val_iou"], alone["best_step"])


def test_gan_sets_are_scored_with_the_synthetic_jitter_and_real_pairs_with_the_real_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float]] = []
    train = seg.train_segmenter
    monkeypatch.setattr(ex, "train_segmenter", lambda ims, ms, c, **k: seen.append((len(ims), c.photometric))
                        or train(ims, ms, c, **k))
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=2, g_width=8, d_width=8, nodes=2,
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2, photometric=0.1),
                              synthetic_photometric=0.4, seeds=1, samples_per_mask=3, scenes=24, quick=True,
                              partition="iid", threads=1, gan_methods=("central_gan",), local=())
    results = ex.run_experiment(cfg)
    n = results["sizes"]["train"]
    assert sorted(seen) == sorted([(n, 0.1), *((k, 0.1) for k in (len(p) for p in ex.make_splits(cfg).node_parts)),
                                   (3 * n, 0.4), (3 * n, 0.4)])  # central_gan and central_gan_last: synthetic


def test_synthetic_images_get_their_own_jitter_and_only_the_gan_methods_keys_change(tmp_path: Path) -> None:
    splits = _splits()
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, seg=SegConfig(photometric=0.1),
                               synthetic_photometric=None)
    assert ex.ExperimentConfig(out=tmp_path).seg_config("synthetic").photometric == 0.3  # the default, on validation
    assert ex.ExperimentConfig(out=tmp_path).seg_config("real").photometric == 0.0
    on = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, seg=SegConfig(photometric=0.1), synthetic_photometric=0.3)
    assert on.seg_config("synthetic").photometric == 0.3 and on.seg_config("real").photometric == 0.1
    assert base.seg_config("synthetic").photometric == 0.1  # None: as the real images
    assert on.seg_config("local").photometric == 0.1  # department stages: their own setting, by default the real one
    for method in ("real_all", "real_partial"):
        assert cache_key(base, splits, method) == cache_key(on, splits, method)
    assert cache_key(base, splits, "central_gan", "adversarial") != cache_key(on, splits, "central_gan", "adversarial")
    same = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, seg=SegConfig(photometric=0.3))
    assert cache_key(same, splits, "central_gan", "adversarial") == cache_key(on, splits, "central_gan", "adversarial")
    for bad in (-0.1, 1.5, float("nan")):
        for name in ("synthetic", "local"):
            with pytest.raises(ex.ExperimentSetupError, match=f"{name} photometric must be in"):
                ex.ExperimentConfig(out=tmp_path, **{f"{name}_photometric": bad})
    assert jitter_line({"seg": {"photometric": 0.0}}) == []
    assert ("0 on real images, 0.3 on a GAN's synthetic set alone, 0 on the department models' synthetic stage"
            in jitter_line({"seg": {"photometric": 0.0}, "synthetic_photometric": 0.3})[0])


def test_mixed_and_replay_batches_jitter_each_source_at_its_own_strength(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float]] = []
    jitter = seg._photometric

    def spy(rng: np.random.Generator, x: torch.Tensor, strength: float) -> torch.Tensor:
        seen.append((len(x), strength))
        return jitter(rng, x, strength)

    monkeypatch.setattr(seg, "_photometric", spy)
    syn, own = make_scenes(range(100, 108), 32), make_scenes(range(8), 32)
    cfg = SegConfig(width=8, depth=3, steps=2, batch_size=8, photometric=0.3)
    train_local(syn, own, cfg, how="mixed", real_share=0.25, real_photometric=0.0)
    assert seen == [(6, 0.3), (2, 0.0)] * 2  # 6 synthetic at 0.3, 2 real at 0: per step
    seen.clear()
    train_local(syn, own, cfg, how="mixed", real_share=0.25)  # None: one strength for the whole batch, as before
    assert seen == [(8, 0.3)] * 2
    seen.clear()
    train_local(syn, own, cfg, how="pretrain", real_photometric=0.0)
    assert seen == [(8, 0.3)] * 2 + [(8, 0.0)] * 2  # the synthetic stage, then the own pairs
    seen.clear()
    train_local(syn, own, cfg, how="replay", real_share=0.75, real_photometric=0.0)
    # the synthetic stage as pretrain's; then 6 own pairs at their jitter and 2 synthetic ones at theirs, per step
    assert seen == [(8, 0.3)] * 2 + [(6, 0.0), (2, 0.3)] * 2
    seen.clear()
    train_local(syn, own, cfg, how="replay", real_share=0.5, real_photometric=0.3)  # one strength: one call
    assert seen == [(8, 0.3)] * 4
    seen.clear()
    train_local(syn, own, cfg, how="pretrain", real_photometric=0.3)  # pretrain: own pairs alone, unchanged
    assert seen == [(8, 0.3)] * 4


def test_the_command_refuses_a_synthetic_jitter_out_of_range_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), "--synthetic-photometric", "1.5"])
    assert res.exit_code == 2 and "synthetic photometric must be in [0, 1]" in res.output
    assert not (tmp_path / "exp" / "results.json").exists()


def test_a_department_at_home_jitters_its_own_and_the_synthetic_images_as_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app
    from tests.test_segment_experiment import _pairs_folder

    mine, syn = _pairs_folder(tmp_path / "mine", range(6)), _pairs_folder(tmp_path / "syn", range(100, 106))
    asked: list[tuple[float, float | None]] = []
    local, alone = seg.train_local, seg.train_segmenter
    monkeypatch.setattr(seg, "train_local", lambda s, r, c, **k: asked.append((c.photometric, k["real_photometric"]))
                        or local(s, r, c, **k))
    monkeypatch.setattr(seg, "train_segmenter", lambda i, m, c, **k: asked.append((c.photometric, None))
                        or alone(i, m, c, **k))
    args = ["segment", "train", "--data", str(mine), "--size", "32", "--steps", "2", "--width", "8", "--threads", "1"]
    for extra, expected in ((["--synthetic", str(syn), "--synthetic-photometric", "0.3"], (0.3, 0.0)),
                            (["--synthetic", str(syn), "--photometric", "0.2"], (0.2, 0.2)),
                            (["--photometric", "0.2", "--synthetic-photometric", "0.3"], (0.2, None))):
        asked.clear()
        res = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "m.pt")])
        assert res.exit_code == 0 and asked[0] == expected, (extra, res.output, asked)
    bad = CliRunner().invoke(app, [*args, "--synthetic-photometric", "2", "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "must be in [0, 1]" in bad.output and not (tmp_path / "x.pt").exists()


def test_department_models_from_the_central_gans_sets_match_whether_it_trained_or_came_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.experiment_central as central
    from dgan.choices import LocalFrom
    from dgan.experiment_config import LOCAL_NAMES
    from dgan.experiment_tables import department_rows

    cfg = ex.ExperimentConfig(out=tmp_path / "a", size=32, gan_steps=4, g_width=8, d_width=8, nodes=2,
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2), seeds=1, samples_per_mask=2,
                              scenes=24, quick=True, partition="iid", threads=1, gan_methods=("central_gan",),
                              snapshots=2, local_from=("dgan", "central_gan"), cache=tmp_path / "cache")
    trained = ex.run_experiment(cfg)["methods"]
    assert "dgan_local" not in trained  # dgan did not run: nothing to start from, and the run goes on
    assert "gan_loaded" not in trained["central_local"]  # this run's own sets

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("the central GAN trained again")

    monkeypatch.setattr(central, "central_gan", no_training)  # its scores and its trainings come from the cache
    again = ex.run_experiment(ex.replace(cfg, out=tmp_path / "b"))["methods"]
    for node in ("node0", "node1"):  # its generators, loaded, synthesise the very sets it was scored on
        first, second = (m["central_local"]["per_node"][node]["seeds"][0] for m in (trained, again))
        assert (first["iou"], first["best_val_iou"]) == (second["iou"], second["best_val_iou"])
    assert again["central_local"]["from"] == "central_gan" and again["central_local"]["gan_loaded"] == [True]
    _, head, rows = department_rows(again)
    assert head == ["department", "real_partial", "central_gan (synthetic only)", "central_local"] and len(rows) == 2
    for bad in (("real_partial",), (), ("dgan", "dgan")):
        with pytest.raises(ex.ExperimentSetupError, match="local_from must be among dgan, central_gan, real_all, "
                                                          "each once"):
            ex.ExperimentConfig(out=tmp_path, local_from=bad)
    assert set(LOCAL_NAMES) == {m.value for m in LocalFrom}


def test_the_command_refuses_department_models_from_a_gan_it_does_not_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    def refused(*args: str) -> str:  # the error's words, out of rich's box
        res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), *args])
        assert res.exit_code == 2, res.output
        return " ".join(res.output.replace("│", " ").split())

    assert "central_gan is not among the GAN methods run" in refused("--gan-method", "dgan", "--local-from",
                                                                      "central_gan")
    assert "drop --no-department-models" in refused("--no-department-models", "--local-from", "central_gan")
    assert not (tmp_path / "exp" / "results.json").exists()


@pytest.mark.parametrize(("stage_iou", "tuned_iou", "stage_only"), [(0.5, 0.4, True), (0.4, 0.5, False),
                                                                    (0.5, 0.5, False)])
def test_a_department_model_says_when_fine_tuning_lost_and_its_synthetic_stage_was_kept(
        monkeypatch: pytest.MonkeyPatch, stage_iou: float, tuned_iou: float, stage_only: bool) -> None:
    models: list[torch.nn.Module] = []

    def fake(*a: object, **k: object) -> tuple[torch.nn.Module, dict[str, object]]:
        models.append(torch.nn.Linear(1, 1))
        return models[-1], {"best_val_iou": (stage_iou, tuned_iou)[len(models) - 1], "best_step": len(models),
                            "train_seconds": 1.0, "history": []}

    monkeypatch.setattr(seg, "train_segmenter", fake)
    syn, own = make_scenes(range(100, 102), 32), make_scenes(range(2), 32)
    model, info = train_local(syn, own, SegConfig(), val=own, how="pretrain")
    assert info["synthetic_stage_only"] is stage_only and model is models[0 if stage_only else 1]
    assert info["best_val_iou"] == max(stage_iou, tuned_iou) and info["train_seconds"] == 2.0
