"""Department-model recipes beyond pretraining: replay keeps synthetic pairs in the fine-tuning batches, and the
pooled real pairs (`real_local`) give the yardstick of what pooling every image would give a department."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dgan.experiment as ex
import dgan.segment as seg
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits
from dgan.experiment_tables import department_rows, markdown
from dgan.segment import SegConfig, train_local


def test_replay_and_pretrain_start_from_one_stage_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ims, masks = make_scenes(range(8), 32)
    pairs = PairSet(ims, masks, [f"p{i}" for i in range(8)], {}, ("background", "building"))
    splits = Splits(train=pairs, val=pairs.subset([6, 7]), test=pairs.subset([6, 7]),
                    node_parts=[[0, 1, 2], [3, 4, 5]], description={})
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, local_share=0.75,
                              seg=SegConfig(width=8, depth=3, steps=4, eval_every=2))
    stages: list[int] = []
    tuned: dict[str, list[float | None]] = {}  # per recipe: the synthetic share of each fine-tuning stage
    stage, train = seg.synthetic_stage, seg.train_segmenter
    monkeypatch.setattr(ex, "synthetic_stage", lambda *a, **k: stages.append(a[1].seed) or stage(*a, **k))

    def spy(*a: object, **k: object) -> object:
        if k.get("init") is not None:  # a fine-tuning stage
            tuned[how].append(None if k.get("mix") is None else k["mix"][2])  # type: ignore[index]
        return train(*a, **k)

    monkeypatch.setattr(seg, "train_segmenter", spy)
    shared: dict[tuple[int, bool], ex.Stage] = {}
    sets = [pairs.subset([0, 1, 2, 3])]
    for how in ("pretrain", "replay", "finetune"):
        tuned[how] = []
        ex.department_models(cfg, splits, sets, [0, 1], how, shared=shared)
    assert stages == [0, 1, 0, 1]  # pretrain's two stages serve replay; finetune's half-length ones are its own
    assert sorted(shared) == [(0, False), (0, True), (1, False), (1, True)]
    # 2 seeds x 2 departments each; replay keeps 1 - local_share of its fine-tuning batches synthetic
    assert tuned == {"pretrain": [None] * 4, "replay": [0.25] * 4, "finetune": [None] * 4}


def test_pretrain_is_its_first_stage_then_the_own_pairs_alone_from_those_weights() -> None:
    syn, own = make_scenes(range(100, 108), 32), make_scenes(range(8), 32)
    val = make_scenes(range(900, 902), 32)
    cfg = SegConfig(width=8, depth=3, steps=6, eval_every=3)
    model, _ = train_local(syn, own, cfg, how="pretrain")
    first, _ = seg.synthetic_stage(syn, cfg, how="pretrain")
    by_hand, _ = seg.train_segmenter(*own, cfg, init=first.state_dict())
    assert np.array_equal(seg.predict(model, val[0]), seg.predict(by_hand, val[0]))
    replayed, _ = train_local(syn, own, cfg, how="replay", real_share=0.5)
    assert not np.array_equal(seg.predict(replayed, val[0]), seg.predict(model, val[0]))  # the replay is used


def test_a_mixed_batch_needs_room_for_both_sources(tmp_path: Path) -> None:
    syn, own = make_scenes(range(100, 104), 32), make_scenes(range(4), 32)
    for how in ("replay", "mixed"):  # a batch of one would quietly hold the own pairs (or the synthetic) alone
        with pytest.raises(ValueError, match="batches of 2 or more"):
            train_local(syn, own, SegConfig(width=8, depth=3, steps=2, batch_size=1), how=how)
        with pytest.raises(ex.ExperimentSetupError, match=">= 2 for local mixed or replay"):  # before any training
            ex.ExperimentConfig(out=tmp_path, local=("pretrain", how), seg=SegConfig(batch_size=1))
    ex.ExperimentConfig(out=tmp_path, local=("pretrain",), seg=SegConfig(batch_size=1))  # one set per batch: fine
    with pytest.raises(ex.ExperimentSetupError, match="batch size must be >= 1"):
        ex.ExperimentConfig(out=tmp_path, seg=SegConfig(batch_size=0))


def test_a_department_at_home_replays_the_synthetic_set_from_the_cli(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dgan.cli import app
    from tests.test_segment_experiment import _pairs_folder

    mine, syn = _pairs_folder(tmp_path / "mine", range(8)), _pairs_folder(tmp_path / "syn", range(100, 116))
    args = ["segment", "train", "--data", str(mine), "--synthetic", str(syn), "--size", "32", "--steps", "4",
            "--width", "8", "--threads", "1", "--how", "replay", "--real-share", "0.75"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m.pt"), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert settings["how"] == "replay" and settings["real_share"] == 0.75
    bad = CliRunner().invoke(app, [*args, "--batch-size", "1", "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "2 or more for --how replay" in " ".join(bad.output.split())
    assert not (tmp_path / "x.pt").exists()


def test_real_local_starts_every_department_from_the_pooled_real_pairs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    firsts: list[tuple[int, float]] = []
    stage = seg.synthetic_stage
    monkeypatch.setattr(ex, "synthetic_stage", lambda *a, **k: firsts.append((len(a[0][0]), a[1].photometric))
                        or stage(*a, **k))
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, nodes=2, seeds=2,
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2, photometric=0.1), scenes=24,
                              quick=True, partition="iid", threads=1, gan_methods=(), local=("pretrain", "replay"),
                              local_from=("real_all",), local_photometric=0.4)
    results = ex.run_experiment(cfg)
    methods = results["methods"]
    n = results["sizes"]["train"]
    # one stage per seed, on every training pair, shared by replay; jittered as real pairs, not as a GAN's set
    assert firsts == [(n, 0.1)] * 2
    assert methods["real_local"]["from"] == "real_all" and "feedback" not in methods["real_local"]
    assert methods["real_local_replay"]["local_share"] == 0.5 and "local_share" not in methods["real_local"]
    for r in methods["real_local"]["per_node"]["node0"]["seeds"]:  # the pooled pairs hold the own ones already
        assert r["train_pairs"] == n and "gan_seed" not in r
    assert "dgan_local_vs_real_partial" not in results["claims"]  # a yardstick: no claim
    _, head, rows = department_rows(methods)
    assert head == ["department", "real_partial", "real_all (pooled real only)", "real_local", "real_local_replay"]
    assert len(rows) == 2 and "real_local_replay" in markdown(results)


def test_the_department_claim_reads_dgan_local_alone_beside_the_yardsticks() -> None:
    from dgan.experiment_tables import claims

    def per_node(*ious: float) -> dict[str, object]:
        return {"iou": sum(ious) / len(ious), "per_node": {f"node{k}": {"iou": v} for k, v in enumerate(ious)}}

    methods = {"real_partial": per_node(0.5, 0.2), "dgan_local": per_node(0.51, 0.3)}
    alone = claims(methods)["dgan_local_vs_real_partial"]
    with_yardsticks = claims({**methods, "real_local": per_node(0.9, 0.9), "central_local": per_node(0.8, 0.8)})
    assert with_yardsticks["dgan_local_vs_real_partial"] == alone and not alone["met"]  # node0 gains 0.01 only
    assert set(with_yardsticks) == {"dgan_local_vs_real_partial"}


def test_the_command_runs_the_pooled_real_yardstick_beside_any_gan(tmp_path: Path, captured_experiments: list) -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    got = captured_experiments
    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), "--gan-method", "dgan",
                                   "--local-from", "real_all", "--local", "replay", "--local-share", "0.75"])
    assert res.exit_code == 2 and "captured" in res.output, res.output
    assert got[0].local_from == ("real_all",) and got[0].local == ("replay",) and got[0].local_share == 0.75
