"""Segmentation metrics and training, and the experiment pipeline end to end on a tiny budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dgan.data.scenes import make_scenes
from dgan.experiment import ExperimentConfig, claims, from_cache, run_experiment
from dgan.experiment_tables import markdown
from dgan.provenance import code_version
from dgan.segment import SegConfig, metrics, predict, train_local, train_segmenter


def test_metrics_are_computed_over_all_pixels() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = 1  # 8 building pixels
    pred = np.zeros((2, 4, 4), bool)
    pred[0, :1] = True  # 4 hit
    pred[1, 0, 0] = True  # 1 false positive
    m = metrics(pred, truth)
    assert m["iou"] == pytest.approx(4 / 9) and m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 8) and m["f1"] == pytest.approx(8 / 13)
    assert m["accuracy"] == pytest.approx(27 / 32)
    assert m["iou_per_image"] == pytest.approx((4 / 8 + 0) / 2)


def test_segmenter_learns_buildings_and_keeps_the_best_validation_model() -> None:
    ims, ms = make_scenes(range(64), 32)
    vi, vm = make_scenes(range(1000, 1016), 32)
    model, info = train_segmenter(ims, ms, SegConfig(width=8, depth=3, steps=120, eval_every=40, lr=3e-3),
                                  val=(vi, vm))
    assert [h["step"] for h in info["history"]] == [40, 80, 120]
    assert info["best_val_iou"] == max(h["val_iou"] for h in info["history"])
    ti, tm = make_scenes(range(2000, 2016), 32)
    iou = metrics(predict(model, ti) > 0.5, tm)["iou"]
    everything = metrics(np.ones_like(tm, bool), tm)["iou"]  # predicting all-building
    assert iou > 2 * everything, (iou, everything)


def test_standardizing_segmenter_ignores_a_colour_cast_and_mostly_ignores_contrast() -> None:
    import torch

    from dgan.segment import define_segmenter

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) - 0.5
    seg = define_segmenter(SegConfig(width=8, depth=3, standardize=True)).eval()
    plain = define_segmenter(SegConfig(width=8, depth=3)).eval()
    plain.load_state_dict(seg.state_dict())  # same weights, only the standardisation differs
    cast = torch.tensor([0.2, -0.1, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(seg(x), seg(x + cast), atol=1e-4)
        assert not torch.allclose(plain(x), plain(x + cast), atol=1e-2)
        # a 30% contrast cut moves the output by a few percent (the std floor keeps flat patches from being
        # blown up, so it is not exactly invariant)
        moved = float((seg(0.7 * x) - seg(x)).abs().mean())
        assert moved < 0.1 * float(seg(x).abs().mean())


def test_photometric_jitter_is_off_at_zero_and_changes_appearance_not_shape() -> None:
    import torch

    from dgan.segment import _photometric

    x = torch.rand(8, 3, 16, 16) * 2 - 1
    assert _photometric(np.random.default_rng(0), x, 0.0) is x
    y = _photometric(np.random.default_rng(0), x, 0.3)
    assert y.shape == x.shape and not torch.allclose(y, x) and float(y.abs().max()) <= 1.5
    means = y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    assert float(means.std()) > 0  # each image gets its own jitter


def test_recolour_is_off_at_zero_and_only_shuffles_inverts_or_greys_whole_images() -> None:
    import itertools

    import torch

    from dgan.segment import _recolour

    x = torch.rand(64, 3, 8, 8) * 2 - 1
    rng = np.random.default_rng(0)
    assert _recolour(rng, x, 0.0) is x
    assert rng.random() == np.random.default_rng(0).random()  # off draws nothing: earlier runs stay as they were
    y = _recolour(np.random.default_rng(1), x, 0.5)
    kinds = []
    for a, b in zip(x, y, strict=True):
        looks = [sign * a[list(p)] for p in itertools.permutations(range(3)) for sign in (1, -1)]
        looks += [v.mean(0, keepdim=True).expand_as(v) for v in looks]
        match = [i for i, v in enumerate(looks) if torch.allclose(b, v)]
        assert match, "every image is one of its own recolourings"
        kinds.append(match[0])
    unchanged = sum(k == 0 for k in kinds)
    assert 16 <= unchanged <= 48 and any(k >= 12 for k in kinds) and any(k % 2 == 1 for k in kinds)


def test_train_segmenter_recolours_only_the_main_sets_images_and_only_when_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.segment

    seen: list[tuple[int, float]] = []
    real = dgan.segment._recolour
    monkeypatch.setattr(dgan.segment, "_recolour",
                        lambda rng, x, share: seen.append((len(x), share)) or real(rng, x, share))
    images, masks = make_scenes(range(8), 32)
    cfg = SegConfig(width=4, depth=2, steps=3, batch_size=8, eval_every=3)
    plain = train_segmenter(images, masks, cfg, val=(images, masks))[1]["history"]
    assert seen == []  # off: not even called, so earlier runs draw the same batches
    recoloured = train_segmenter(images, masks, replace(cfg, recolour=1.0), val=(images, masks))[1]["history"]
    assert seen == [(8, 1.0)] * 3 and recoloured != plain
    seen.clear()
    train_segmenter(images, masks, replace(cfg, recolour=1.0), mix=(images, masks, 0.5))
    assert seen == [(4, 1.0)] * 3  # a department's own real half of each batch keeps its colours


def test_train_segmenter_hands_the_unet_nhwc_batches_whatever_the_augmentation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import dgan.segment

    formats: list[bool] = []
    real = dgan.segment.define_segmenter

    def watched(cfg: SegConfig) -> torch.nn.Module:
        model = real(cfg)
        model.register_forward_pre_hook(lambda _m, args: formats.append(
            args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
        return model

    monkeypatch.setattr(dgan.segment, "define_segmenter", watched)
    images, masks = make_scenes(range(8), 32)
    cfg = SegConfig(width=4, depth=2, steps=2, batch_size=8, eval_every=100)
    for c, mix in ((cfg, None), (replace(cfg, recolour=1.0), None), (replace(cfg, recolour=1.0), (images, masks, 0.5)),
                   (replace(cfg, photometric=0.3), None)):
        formats.clear()
        train_segmenter(images, masks, c, mix=mix)
        assert formats == [True, True], (c, mix is not None)  # recoloured without a mix fed NCHW: 2x slower


def test_pair_grid_shows_the_masks_with_the_most_buildings_first(tmp_path: Path) -> None:
    from PIL import Image

    from dgan.segment import pair_grid

    masks = np.zeros((5, 8, 8), np.uint8)
    for i in range(5):
        masks[i, : 2 * i] = 1  # mask i has 16 * i building pixels
    images = np.zeros((5, 8, 8, 3), np.uint8)
    grid = np.asarray(Image.open(pair_grid(images, masks, tmp_path / "g.png", n=2)))
    assert grid.shape == (16, 16, 3)
    assert (grid[:8, :8, 0] > 0).sum() == 64 and (grid[8:, :8, 0] > 0).sum() == 48  # masks 4 then 3


def test_claims_compare_the_right_numbers() -> None:
    c = claims({"dgan": {"iou": 0.5}, "central_gan": {"iou": 0.5}, "real_all": {"iou": 0.6},
                "real_partial": {"iou": 0.45}})
    assert c["dgan_vs_central"]["met"] and c["dgan_vs_partial_mean"]["met"]
    assert not c["dgan_vs_real_all"]["met"] and c["dgan_vs_real_all"]["ratio"] == pytest.approx(0.5 / 0.6)
    modes = claims({"dgan": {"iou": 0.5}, "central_gan": {"iou": 0.5}, "real_all": {"iou": 0.6},
                    "real_partial": {"iou": 0.45}, "dgan_l1": {"iou": 0.52}, "dgan_adversarial": {"iou": 0.1},
                    "dgan_sync": {"iou": 0.9}})
    assert not modes["dgan_vs_dgan_l1"]["met"] and modes["dgan_vs_dgan_adversarial"]["met"]
    assert "dgan_vs_dgan_sync" not in modes  # sync is a schedule, not a feedback mode


def test_results_md_says_how_long_each_gan_trained_which_training_was_loaded_and_what_synthesised() -> None:
    m = {"iou": 0.3, "f1": 0.4, "precision": 0.5, "recall": 0.3, "accuracy": 0.9}
    md = markdown({"dataset": "d", "partition": "group", "resolution": 64, "claims": {}, "methods": {
        "real_all": m, "real_partial": {**m, "per_node": {"node0": {"iou": 0.3, "iou_std": 0.01}}},
        "central_gan": {**m, "gan_seconds": [285.2, 290.0], "gan_reused": [False, False]},
        "dgan": {**m, "gan_seconds": [590.4, 1089.0], "gan_reused": [False, True],
                 "synthesis_weights": ["snapshots 500,600,700,800", "raw"]}}})
    assert "- central_gan: GAN training seconds per GAN seed: 285, 290\n" in md
    assert "1089 (loaded: a finished training with the same settings); synthesised from: snapshots 500,600,700,800; " \
           "raw\n" in md
    assert "- dgan: GAN training seconds per GAN seed: 590, 1089 (loaded: a finished training" in md
    assert "real_all: GAN" not in md


def test_a_gan_result_from_the_cache_counts_every_training_as_loaded(tmp_path: Path) -> None:
    path = tmp_path / "central_gan-key.json"
    path.write_text(json.dumps({"iou": 0.3, "gan_seconds": [285.0, 290.0], "gan_reused": [False, False]}))
    assert from_cache(path)["gan_reused"] == [True, True]
    path.write_text(json.dumps({"iou": 0.5}))  # real_all: no GAN, nothing to mark
    assert "gan_reused" not in from_cache(path)


def test_department_claim_needs_every_department_to_gain_and_needs_no_central_gan() -> None:
    partial = {"iou": 0.3, "per_node": {"node0": {"iou": 0.5}, "node1": {"iou": 0.1}}}
    local = {"iou": 0.4, "per_node": {"node0": {"iou": 0.52}, "node1": {"iou": 0.3}}}
    c = claims({"real_all": {"iou": 0.6}, "real_partial": partial, "dgan": {"iou": 0.2}, "dgan_local": local})
    gains = c["dgan_local_vs_real_partial"]
    assert gains["gains"] == pytest.approx({"node0": 0.02, "node1": 0.2}) and gains["mean_gain"] == pytest.approx(0.11)
    assert not gains["met"]  # node0 gained only 0.02 < 0.03, however large the mean
    assert "dgan_vs_central" not in c and "dgan_vs_dgan_local" not in c


@pytest.mark.timeout(900)  # three DGAN process runs: minutes on a loaded 2-core machine
def test_quick_experiment_runs_every_method_and_writes_results(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=6, g_width=8, d_width=8, nodes=2,
                           seg=SegConfig(width=8, depth=3, steps=20, eval_every=10), seeds=1, samples_per_mask=1,
                           scenes=24, quick=True, partition="iid", threads=1, feedback=("segmentation", "l1"))
    results = run_experiment(cfg)
    # by default both GANs synthesise from 4 snapshots, with the same trainings' last weights measured beside
    assert set(results["methods"]) == {"real_all", "real_partial", "central_gan", "dgan", "central_gan_l1", "dgan_l1",
                                       "dgan_local", "central_gan_last", "dgan_last", "central_gan_l1_last",
                                       "dgan_l1_last"}
    assert results["methods"]["dgan"]["synthesis_weights"][0].startswith("snapshots ")
    assert results["config"]["pipeline"] == 1  # one request in flight per node
    local = results["methods"]["dgan_local"]  # each department: DGAN's synthetic set plus its own real pairs
    assert set(local["per_node"]) == {"node0", "node1"} and local["how"] == "pretrain"
    assert local["per_node"]["node0"]["seeds"][0]["train_pairs"] > results["methods"]["dgan"]["seeds"][0]["train_pairs"]
    assert set(results["claims"]["dgan_local_vs_real_partial"]["gains"]) == {"node0", "node1"}
    # like for like: each central GAN trains with the loss of the DGAN it is compared with
    assert {k: m.get("feedback") for k, m in results["methods"].items() if "gan" in k} == {
        "central_gan": "segmentation", "dgan": "segmentation", "central_gan_l1": "l1", "dgan_l1": "l1",
        "central_gan_last": "segmentation", "dgan_last": "segmentation", "central_gan_l1_last": "l1",
        "dgan_l1_last": "l1", "dgan_local": "segmentation"}  # department models: the first mode's synthetic sets
    nodes = json.loads((tmp_path / "exp" / "dgan_async_l1_d2_seed0" / "run.json").read_text())["nodes"]
    assert {n["feedback"] for n in nodes.values()} == {"l1"}
    assert set(results["methods"]["real_partial"]["per_node"]) == {"node0", "node1"}
    on_disk = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert on_disk["methods"]["dgan"]["iou"] == results["methods"]["dgan"]["iou"]
    assert 0 <= on_disk["methods"]["dgan"]["iou"] <= 1
    assert (tmp_path / "exp" / "predictions" / "dgan.png").exists()
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| dgan |" in md and "| node1 |" in md and "dgan_local - real_partial per department" in md
    cache = list((tmp_path / "experiment-cache").glob("*.json"))
    assert sorted(p.name.split("-")[0] for p in cache) == ["central_gan", "central_gan", "real_all", "real_partial"]
    assert results["code"] == code_version() and "Code: dgan " in md  # which code made this run ...
    assert results["methods"]["real_all"]["made_by"] == code_version()  # ... and each result it cached
    again = run_experiment(cfg)  # cached methods come back identical
    assert again["methods"]["real_all"] == results["methods"]["real_all"]
    assert again["methods"]["real_partial"] == results["methods"]["real_partial"]
    cfg.feedback, cfg.gan_methods = ("segmentation",), ("dgan",)  # train DGAN only: the central GAN comes cached
    cfg.judged = True  # ... and the same trainings' sets from their judged weights beside
    only = run_experiment(cfg)
    assert set(only["methods"]) == {"real_all", "real_partial", "central_gan", "central_gan_last", "dgan", "dgan_last",
                                    "dgan_judged", "dgan_local"}
    assert only["methods"]["central_gan"]["iou"] == results["methods"]["central_gan"]["iou"]
    assert results["methods"]["central_gan"]["gan_reused"] == [False]  # trained in the first run ...
    assert only["methods"]["central_gan"]["gan_reused"] == [True]  # ... and loaded, not trained, in this one
    judged = only["methods"]["dgan_judged"]  # 6 steps: no transfer verdict yet, so the last weights, like dgan's
    assert judged["judged_steps"] == [None] and judged["feedback"] == "segmentation"
    assert judged["iou"] == only["methods"]["dgan"]["iou"]
    assert "dgan_judged: " in (tmp_path / "exp" / "results.md").read_text()
    assert "dgan_vs_dgan_judged" not in only["claims"]  # a second look at the same trainings, not a rival method


def test_segmentation_seeds_share_one_gan_unless_gan_seeds_asks_for_more(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out=tmp_path / "exp", size=32, gan_steps=4, g_width=8, d_width=8, nodes=2,
                           seg=SegConfig(width=8, depth=3, steps=10, eval_every=10), seeds=2, samples_per_mask=1,
                           scenes=24, quick=True, partition="iid", threads=1)
    central = run_experiment(cfg)["methods"]["central_gan"]
    assert [r["gan_seed"] for r in central["seeds"]] == [0, 0] and len(central["gan_seconds"]) == 1
    cfg.gan_seeds = 2
    central = run_experiment(cfg)["methods"]["central_gan"]  # a new cache key: the GAN differs
    assert [r["gan_seed"] for r in central["seeds"]] == [0, 1] and len(central["gan_seconds"]) == 2


DUBAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai_aerial_buildings"


@pytest.mark.skipif(not DUBAI.exists(), reason="the shared Dubai patches are not beside this checkout")
def test_dubai_split_keeps_tile_8_for_test_and_nodes_hold_whole_tiles(tmp_path: Path) -> None:
    from dgan.experiment import make_splits

    s = make_splits(ExperimentConfig(out=tmp_path, data=DUBAI, size=32))
    assert set(s.test.columns["tile"]) == {"8"} and len(s.test) == 360
    assert "8" not in set(s.train.columns["tile"]) | set(s.val.columns["tile"])
    assert not set(s.train.columns["source_image"]) & set(s.val.columns["source_image"])  # no shared source
    assert s.description["node_tiles"] == [["7"], ["2", "4"], ["5"], ["1", "3", "6"]]


@pytest.mark.skipif(not DUBAI.exists(), reason="the shared Dubai patches are not beside this checkout")
def test_another_test_tile_gives_another_split_with_whole_tiles_dealt_to_nodes(tmp_path: Path) -> None:
    from dgan.experiment import ExperimentSetupError, make_splits

    s = make_splits(ExperimentConfig(out=tmp_path, data=DUBAI, size=32, test="tile=5"))
    assert set(s.test.columns["tile"]) == {"5"} and len(s.test) == 144
    node_tiles = s.description["node_tiles"]
    assert sorted(t for ts in node_tiles for t in ts) == ["1", "2", "3", "4", "6", "7", "8"]  # each tile once
    assert all(node_tiles)
    mine = make_splits(ExperimentConfig(out=tmp_path, data=DUBAI, size=32, test="tile=5,6", groups="7|8|1,2,3|4"))
    assert set(mine.test.columns["tile"]) == {"5", "6"} and mine.description["node_tiles"] == [
        ["7"], ["8"], ["1", "2", "3"], ["4"]]
    for test, groups, says in (("tile=9", "", "tile '9' is not in"), ("tile", "", "COLUMN=VALUE"),
                               ("city=paris", "", "no column 'city'"), ("tile=5", "7|8", "group partition by tile"),
                               ("tile=5", "7||8", "nodes split by")):
        with pytest.raises(ExperimentSetupError, match=says):
            make_splits(ExperimentConfig(out=tmp_path, data=DUBAI, size=32, test=test, groups=groups))


def test_a_department_model_learns_from_its_own_pairs_beside_the_synthetic_set() -> None:
    ims, ms = make_scenes(range(24), 32)
    blank = np.zeros_like(ms)  # a "synthetic set" that never shows a building: only the own pairs can teach it
    cfg = SegConfig(width=8, depth=3, steps=120, eval_every=20, lr=3e-3)
    val = make_scenes(range(900, 912), 32)
    alone, _ = train_segmenter(ims, blank, cfg)
    assert (predict(alone, val[0]) > 0.5).mean() < 0.01
    for how in ("mixed", "finetune", "pretrain"):
        model, info = train_local((ims, blank), (ims, ms), cfg, val=val, how=how)
        assert (predict(model, val[0]) > 0.5).mean() > 0.01, how  # it found buildings: the own pairs reached it
        assert info["train_seconds"] > 0
    with pytest.raises(ValueError, match="how must be one of mixed, finetune, pretrain"):
        train_local((ims, blank), (ims, ms), cfg, how="average")
    with pytest.raises(ValueError, match="share between 0 and 1"):
        train_local((ims, blank), (ims, ms), cfg, how="mixed", real_share=1.0)


def test_pretrain_spends_every_step_on_the_synthetic_set_and_again_on_the_own_pairs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.segment as seg

    ims, ms = make_scenes(range(8), 32)
    stages: list[tuple[int, bool]] = []
    real_train = seg.train_segmenter

    def spy(images: np.ndarray, masks: np.ndarray, cfg: SegConfig, **kw: object) -> object:
        stages.append((cfg.steps, kw.get("init") is not None))
        return real_train(images, masks, cfg, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(seg, "train_segmenter", spy)
    cfg = SegConfig(width=8, depth=3, steps=10, eval_every=5)
    for how, expected in (("finetune", [(5, False), (5, True)]), ("pretrain", [(10, False), (10, True)])):
        stages.clear()
        train_local((ims, ms), (ims, ms), cfg, how=how)
        assert stages == expected, how


def _pairs_folder(root: Path, seeds: range) -> Path:
    from PIL import Image

    ims, ms = make_scenes(seeds, 32)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, (im, m) in enumerate(zip(ims, ms, strict=True)):
        Image.fromarray(im).save(root / "images" / f"p{i}.png")
        Image.fromarray(m * 255).save(root / "masks" / f"p{i}.png")
    return root


def test_segment_train_with_a_synthetic_set_trains_a_department_model_from_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app
    from dgan.segment import load_model

    mine, syn = _pairs_folder(tmp_path / "mine", range(8)), _pairs_folder(tmp_path / "syn", range(100, 116))
    args = ["segment", "train", "--data", str(mine), "--synthetic", str(syn), "--size", "32", "--steps", "4",
            "--width", "8", "--threads", "1"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m.pt"), "--how", "finetune"])
    assert res.exit_code == 0, res.output
    _, cfg = load_model(tmp_path / "m.pt")
    assert cfg.width == 8
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.pt"), "--real-share", "1.5"])
    assert bad.exit_code == 2 and "--real-share must be between 0 and 1" in bad.output
    missing = CliRunner().invoke(app, [*args[:4], "--synthetic", str(tmp_path / "nope"), "--out",
                                       str(tmp_path / "y.pt")])
    said = " ".join(missing.output.split())
    assert missing.exit_code == 2 and "nope does not exist" in said


def test_settings_that_would_fail_after_hours_of_training_fail_at_once(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app
    from dgan.experiment import ExperimentSetupError

    for bad in ({"local_share": 1.0}, {"ema": 1.0}, {"update_every": -1}, {"local": ("average",)},
                {"grad_dtype": "int4"}, {"fake_dtype": "bfloat16"}):
        with pytest.raises(ExperimentSetupError):
            ExperimentConfig(out=tmp_path, **bad)
    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "x"), "--local-share", "0", "--quick"])
    assert res.exit_code == 2 and "local_share in (0, 1)" in res.output
    assert not (tmp_path / "x" / "results.json").exists()
    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "x"), "--local", "mixed",
                                   "--no-department-models", "--quick"])
    assert res.exit_code == 2 and "--local: asks for department models" in " ".join(res.output.split())
    assert not (tmp_path / "x" / "results.json").exists()
    res = CliRunner().invoke(app, ["generator", "--out", str(tmp_path / "g"), "--synthesis-weights", "ema"])
    assert res.exit_code == 2 and "needs --ema" in res.output
    for word in ("abc", "-3", "\u00b2", "1.5"):  # "\u00b2" passes str.isdigit but not int()
        res = CliRunner().invoke(app, ["generator", "--out", str(tmp_path / "g"), "--update-every", word])
        assert res.exit_code == 2 and "--update-every takes a count >= 0 or auto" in res.output, (word, res.output)


def _seeds(*runs: tuple[int, float, float]) -> list[dict[str, float]]:
    """Segmentation runs as the experiment records them: (GAN seed, test IoU, best validation IoU)."""
    return [{"gan_seed": g, "iou": t, "best_val_iou": v} for g, t, v in runs]


def test_per_gan_seed_averages_each_sets_segmentation_seeds_and_keeps_their_range() -> None:
    from dgan.experiment_tables import per_gan_seed

    m = {"seeds": _seeds((0, 0.4, 0.30), (1, 0.2, 0.10), (0, 0.2, 0.20), (1, 0.3, 0.20))}  # seg seeds 0..3
    per = per_gan_seed(m)
    assert list(per) == [0, 1] and per[0]["n"] == per[1]["n"] == 2
    assert per[0]["test"] == pytest.approx(0.3) and (per[0]["test_min"], per[0]["test_max"]) == (0.2, 0.4)
    assert per[1]["val"] == pytest.approx(0.15) and (per[1]["val_min"], per[1]["val_max"]) == (0.1, 0.2)
    assert per_gan_seed({"iou": 0.5}) == {}  # a result from before GAN seeds were recorded: nothing to split
    from dgan.experiment_tables import gan_seed_table

    half = {"gan_seconds": [1.0], "seeds": [{"gan_seed": 0, "iou": 0.3, "best_val_iou": 0.2},
                                            {"gan_seed": 0, "iou": 0.5}]}  # one run without a validation figure
    assert gan_seed_table({"dgan": half})[-1] == "| dgan | 0.200 / 0.400 (0.300-0.500) |"  # no range of one value


def test_the_per_seed_claim_needs_every_gan_seed_pair_at_0_9x_the_central_gan() -> None:
    real = {"iou": 0.6}
    central = {"iou": 0.4, "seeds": _seeds((0, 0.4, 0.4), (1, 0.4, 0.4))}
    good = {"iou": 0.55, "seeds": _seeds((0, 0.8, 0.8), (1, 0.3, 0.3))}  # the mean beats central, seed 1 does not
    c = claims({"dgan": good, "central_gan": central, "real_all": real, "real_partial": real})
    pair = c["dgan_vs_central_per_gan_seed"]
    assert c["dgan_vs_central"]["met"] and not pair["met"]
    assert pair["ratios"] == pytest.approx([2.0, 0.75]) and pair["val_ratios"] == pytest.approx([2.0, 0.75])
    even = {"iou": 0.37, "seeds": _seeds((0, 0.37, 0.2), (1, 0.37, 0.2))}  # test ratios 0.925: met on test
    assert claims({"dgan": even, "central_gan": central, "real_all": real,
                   "real_partial": real})["dgan_vs_central_per_gan_seed"]["met"]
    old = claims({"dgan": {"iou": 0.5}, "central_gan": {"iou": 0.5}, "real_all": real, "real_partial": real})
    assert "dgan_vs_central_per_gan_seed" not in old
    lone = {"iou": 0.4, "seeds": _seeds((0, 0.4, 0.4))}  # central's seed 1 has no DGAN pair: not met
    pair = claims({"dgan": lone, "central_gan": central, "real_all": real,
                   "real_partial": real})["dgan_vs_central_per_gan_seed"]
    assert pair["unpaired"] == [1] and pair["ratios"] == pytest.approx([1.0]) and not pair["met"]
    single = {"iou": 0.4, "seeds": _seeds((0, 0.4, 0.4), (0, 0.4, 0.4))}  # --gan-seeds 1: dgan_vs_central says it
    assert "dgan_vs_central_per_gan_seed" not in claims({"dgan": lone, "central_gan": single, "real_all": real,
                                                         "real_partial": real})


def test_results_md_shows_each_gan_training_with_its_segmentation_spread_and_the_per_seed_claim() -> None:
    m = {"iou": 0.3, "f1": 0.4, "precision": 0.5, "recall": 0.3, "accuracy": 0.9}
    central = {**m, "gan_seconds": [1.0, 1.0], "seeds": _seeds((0, 0.4, 0.5), (1, 0.4, 0.4), (0, 0.2, 0.3),
                                                                 (1, 0.4, 0.4))}
    dgan = {**m, "gan_seconds": [1.0, 1.0], "seeds": _seeds((0, 0.3, 0.3), (1, 0.1, 0.2), (0, 0.3, 0.1),
                                                              (1, 0.3, 0.2))}
    methods = {"real_all": m, "real_partial": {**m, "per_node": {"node0": {"iou": 0.3, "iou_std": 0.0}}},
               "central_gan": central, "dgan": dgan}
    md = markdown({"dataset": "d", "partition": "group", "resolution": 64, "claims": claims(methods),
                   "methods": methods})
    assert "| central_gan | 0.400 (0.300-0.500) / 0.300 (0.200-0.400) | 0.400 (0.400-0.400) / 0.400 (0.400-0.400) |" \
        in md
    assert "| dgan | 0.200 (0.100-0.300) / 0.300 (0.300-0.300) |" in md
    assert "per GAN seed pair (0, 1): test 1.000x, 0.500x; validation 0.500x, 0.500x (target >= 0.9x in each " \
           "pair, judged on test: missed)" in md


@pytest.mark.parametrize(("seeds", "gan_seeds", "methods", "warned"), [
    (2, 2, ("central_gan", "dgan"), True),  # one segmenter per GAN set
    (4, 2, ("central_gan", "dgan"), False),
    (3, 2, ("dgan",), True),  # set 1 gets one
    (2, 1, ("dgan",), False),  # the default: one GAN, both seeds on it
    (1, 1, ("dgan",), True),
    (1, 1, (), False),  # no GAN method: nothing synthetic to score
    (1, 3, ("dgan",), True),  # one GAN trained (seed 0), scored once: --seeds 2
])
def test_experiment_warns_when_a_gan_set_is_scored_by_a_single_segmenter(
        tmp_path: Path, seeds: int, gan_seeds: int, methods: tuple[str, ...], warned: bool) -> None:
    cfg = ExperimentConfig(out=tmp_path, seeds=seeds, gan_seeds=gan_seeds, gan_methods=methods)
    note = cfg.single_scored_sets()
    assert (note is not None) == warned
    if warned:
        assert f"--seeds {2 * min(gan_seeds, seeds)}" in note
        assert ExperimentConfig(out=tmp_path, seeds=seeds, gan_seeds=gan_seeds, gan_methods=methods,
                                quick=True).single_scored_sets() is None  # a smoke run is not a measurement


def test_results_md_carries_the_experiments_notes_and_bad_seed_counts_are_refused(tmp_path: Path) -> None:
    m = {"iou": 0.3, "f1": 0.4, "precision": 0.5, "recall": 0.3, "accuracy": 0.9}
    md = markdown({"dataset": "d", "partition": "group", "resolution": 64, "claims": {}, "notes": ["scored once"],
                   "methods": {"real_all": m, "real_partial": {**m, "per_node": {"n": {"iou": 0.3, "iou_std": 0}}}}})
    assert "**Note:** scored once" in md
    from dgan.experiment import ExperimentSetupError

    for seeds, gan_seeds in ((0, 1), (2, 0)):
        with pytest.raises(ExperimentSetupError, match="seeds and gan_seeds must be >= 1"):
            ExperimentConfig(out=tmp_path, seeds=seeds, gan_seeds=gan_seeds)


@pytest.mark.parametrize(("own_iou", "both_iou", "kept"), [(0.40, 0.55, "with_synthetic"), (0.50, 0.45, "own"),
                                                            (0.50, 0.50, "own")])
def test_segment_train_compare_keeps_the_synthetic_set_only_where_it_beats_the_departments_pairs_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_iou: float, both_iou: float, kept: str) -> None:
    import json

    import torch
    from typer.testing import CliRunner

    import dgan.segment as seg
    from dgan.cli import app

    stage_only = kept == "with_synthetic"  # the synthetic set's model may be its first stage alone: said so

    def fake(cfg: SegConfig, iou: float, fill: float) -> tuple[torch.nn.Module, dict[str, object]]:
        model = seg.define_segmenter(cfg)
        torch.nn.init.constant_(next(model.parameters()), fill)  # tells the saved model apart
        return model, {"best_val_iou": iou, "best_step": 3, "train_seconds": 0.0, "history": [],
                       **({"synthetic_stage_only": stage_only} if fill == 1.0 else {})}

    calls: list[float] = []
    monkeypatch.setattr(seg, "train_local", lambda *a, **k: calls.append(a[2].photometric) or fake(a[2], both_iou, 1.0))
    monkeypatch.setattr(seg, "train_segmenter", lambda *a, **k: calls.append(a[2].photometric)
                        or fake(a[2], own_iou, 2.0))
    mine, syn = _pairs_folder(tmp_path / "mine", range(6)), _pairs_folder(tmp_path / "syn", range(100, 106))
    val = _pairs_folder(tmp_path / "val", range(200, 203))
    res = CliRunner().invoke(app, ["segment", "train", "--data", str(mine), "--synthetic", str(syn), "--val", str(val),
                                   "--compare", "--size", "32", "--width", "8", "--threads", "1", "--photometric",
                                   "0.1", "--synthetic-photometric", "0.3", "--out", str(tmp_path / "m.pt"),
                                   "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert calls == [0.3, 0.1]  # the own-pairs model is jittered as your pairs are in the department model
    said = " ".join(res.output.split())
    assert f"gain │ {both_iou - own_iou:+.4f}" in said and f"({kept})" in said
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["kept"] == kept and out["own"]["best_val_iou"] == own_iou
    assert out["with_synthetic"]["best_val_iou"] == both_iou and out["gain"] == pytest.approx(both_iou - own_iou)
    assert out["with_synthetic"]["synthetic_stage_only"] == stage_only
    assert out["settings"]["how"] == "pretrain" and out["settings"]["synthetic_photometric"] == 0.3
    assert ("its synthetic stage alone" in said) == stage_only
    model, cfg = seg.load_model(tmp_path / "m.pt")
    assert float(next(model.parameters()).detach().flatten()[0]) == (1.0 if kept == "with_synthetic" else 2.0)
    assert cfg.photometric == (0.3 if kept == "with_synthetic" else 0.1)


def test_segment_train_compare_needs_a_synthetic_set_and_validation_pairs_and_json_a_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    mine = _pairs_folder(tmp_path / "mine", range(4))
    for extra in ([], ["--synthetic", str(mine)], ["--val", str(mine)]):
        res = CliRunner().invoke(app, ["segment", "train", "--data", str(mine), "--compare", *extra, "--out",
                                       str(tmp_path / "m.pt")])
        assert res.exit_code == 2 and "--compare needs --synthetic" in res.output, res.output
    res = CliRunner().invoke(app, ["segment", "train", "--data", str(mine), "--json", str(tmp_path / "no" / "m.json"),
                                   "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "does not exist" in res.output  # refused before training, not after saving
    assert not (tmp_path / "m.pt").exists()
