"""Department-model recipes beyond pretraining: replay keeps synthetic pairs in the fine-tuning batches, and the
pooled real pairs (`real_local`) give the yardstick of what pooling every image would give a department."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dgan.experiment as ex
import dgan.segment as seg
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits
from dgan.experiment_tables import department_rows, markdown
from dgan.segment import SegConfig, train_local


def test_replay_keeps_the_synthetic_share_in_every_fine_tuning_batch_at_its_own_jitter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float]] = []
    jitter = seg._photometric

    def spy(rng: np.random.Generator, x: torch.Tensor, strength: float) -> torch.Tensor:
        seen.append((len(x), strength))
        return jitter(rng, x, strength)

    monkeypatch.setattr(seg, "_photometric", spy)
    syn, own = make_scenes(range(100, 108), 32), make_scenes(range(8), 32)
    cfg = SegConfig(width=8, depth=3, steps=2, batch_size=8, photometric=0.3)
    train_local(syn, own, cfg, how="replay", real_share=0.75, real_photometric=0.0)
    # the synthetic stage as pretrain's; then 6 own pairs at their jitter and 2 synthetic ones at theirs, per step
    assert seen == [(8, 0.3)] * 2 + [(6, 0.0), (2, 0.3)] * 2
    seen.clear()
    train_local(syn, own, cfg, how="replay", real_share=0.5, real_photometric=0.3)  # one strength: one call
    assert seen == [(8, 0.3)] * 4
    seen.clear()
    train_local(syn, own, cfg, how="pretrain", real_photometric=0.3)  # pretrain: own pairs alone, unchanged
    assert seen == [(8, 0.3)] * 4


def test_replay_and_pretrain_start_from_one_stage_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ims, masks = make_scenes(range(8), 32)
    pairs = PairSet(ims, masks, [f"p{i}" for i in range(8)], {}, ("background", "building"))
    splits = Splits(train=pairs, val=pairs.subset([6, 7]), test=pairs.subset([6, 7]),
                    node_parts=[[0, 1, 2], [3, 4, 5]], description={})
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2, local_share=0.75,
                              seg=SegConfig(width=8, depth=3, steps=4, eval_every=2))
    stages: list[int] = []
    shares: list[float] = []
    stage, local = seg.synthetic_stage, seg.train_local
    monkeypatch.setattr(ex, "synthetic_stage", lambda *a, **k: stages.append(a[1].seed) or stage(*a, **k))
    monkeypatch.setattr(ex, "train_local", lambda *a, **k: shares.append(k["real_share"]) or local(*a, **k))
    shared: dict[tuple[int, bool], ex.Stage] = {}
    sets = [pairs.subset([0, 1, 2, 3])]
    for how in ("pretrain", "replay", "finetune"):
        ex.department_models(cfg, splits, sets, [0, 1], how, shared=shared)
    assert stages == [0, 1, 0, 1]  # pretrain's two stages serve replay; finetune's half-length ones are its own
    assert sorted(shared) == [(0, False), (0, True), (1, False), (1, True)]
    assert shares == [0.75] * 12


def test_real_local_starts_every_department_from_the_pooled_real_pairs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    stage = seg.synthetic_stage
    monkeypatch.setattr(ex, "synthetic_stage", lambda *a, **k: sizes.append(len(a[0][0])) or stage(*a, **k))
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, nodes=2, seeds=2,
                              seg=SegConfig(width=8, depth=3, steps=2, eval_every=2), scenes=24, quick=True,
                              partition="iid", threads=1, gan_methods=(), local=("pretrain", "replay"),
                              local_from=("real_all",))
    results = ex.run_experiment(cfg)
    methods = results["methods"]
    assert sizes == [results["sizes"]["train"]] * 2  # one stage per seed, on every training pair, shared by replay
    assert methods["real_local"]["from"] == "real_all" and "feedback" not in methods["real_local"]
    assert methods["real_local_replay"]["local_share"] == 0.5 and "local_share" not in methods["real_local"]
    assert "claims" in results and "dgan_local_vs_real_partial" not in results["claims"]  # a yardstick: no claim
    _, head, rows = department_rows(methods)
    assert head == ["department", "real_partial", "real_all (pooled real only)", "real_local", "real_local_replay"]
    assert len(rows) == 2 and "real_local_replay" in markdown(results)


def test_the_command_runs_the_pooled_real_yardstick_beside_any_gan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import dgan.experiment
    from dgan.cli import app

    got: list[ex.ExperimentConfig] = []

    def capture(cfg: ex.ExperimentConfig) -> dict[str, object]:
        got.append(cfg)
        raise ex.ExperimentSetupError("captured")

    monkeypatch.setattr(dgan.experiment, "run_experiment", capture)
    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), "--gan-method", "dgan",
                                   "--local-from", "real_all", "--local", "replay", "--local-share", "0.75"])
    assert res.exit_code == 2 and "captured" in res.output, res.output
    assert got[0].local_from == ("real_all",) and got[0].local == ("replay",) and got[0].local_share == 0.75
