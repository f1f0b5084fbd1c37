"""Replay tools on a recorded run: rebuild the generator bitwise, audit, summary, images, re-send."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dgan import protocol as P
from dgan import replay as R
from dgan.cli import app
from dgan.data.scenes import make_scenes
from dgan.msglog import Direction, MessageLogWriter
from dgan.run import RunConfig, run_local


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("rec") / "run"
    log = out / "broker.dgl"
    run_local(RunConfig(nodes=2, steps=12, out=out, scenes=16, image_size=32, g_width=8, d_width=8,
                        batch_size=2, record=log, checkpoint_every=0, sample_every=0, timeout=240,
                        extra_generator_args=["--g-depth", "3"],
                        node_args=["--d-warmup", "0"]))  # both nodes feed back within 12 steps
    return out, log


def test_rebuilt_generator_equals_the_runs_final_weights_bitwise(recorded_run: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    out, log = recorded_run
    rebuilt = tmp_path / "rebuilt.pt"
    step = R.rebuild_generator(log, out / "checkpoints" / "ckpt_000000.pt", rebuilt)
    final = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert step == final["step"] == 12
    mine = torch.load(rebuilt, weights_only=True)
    for name, tensor in final["G"].items():
        assert torch.equal(tensor, mine["G"][name]), name
    initial = torch.load(out / "checkpoints" / "ckpt_000000.pt", weights_only=True)
    assert not all(torch.equal(initial["G"][k], v) for k, v in final["G"].items())  # training moved it


def test_audit_passes_on_a_normal_run(recorded_run: tuple[Path, Path]) -> None:
    _out, log = recorded_run
    real = make_scenes(range(16), 32)[0]  # the run's own training scenes (seeds 0..15)
    report = R.audit(log, real)
    assert report.ok, report.violations + report.near_duplicates
    kinds = " ".join(report.tensors)
    assert "FEEDBACK grad" in kinds and "FAKES fakes" in kinds and "FAKE_REQUEST masks" in kinds


def _crafted_log(path: Path, tensors: dict[str, np.ndarray], kind: P.Kind = P.Kind.FEEDBACK) -> Path:
    w = MessageLogWriter(path)
    meta = {"losses": {}} if kind == P.Kind.FEEDBACK else {}
    w.append(Direction.FROM_NODE, "mallory", P.encode(P.make(kind, "mallory", meta=meta, tensors=tensors)))
    w.close()
    return path


def test_audit_fails_when_a_node_sends_a_real_image(tmp_path: Path) -> None:
    real = make_scenes(range(4), 32)[0]
    grad = np.zeros((1, 3, 32, 32), np.float32)
    # 1. an extra tensor that no protocol kind allows
    rep = R.audit(_crafted_log(tmp_path / "a.dgl", {"grad": grad, "image": real[:1].transpose(0, 3, 1, 2).copy()}))
    assert not rep.ok and "never allowed" in rep.violations[0]
    # 2. an image disguised as masks (values far beyond class ids)
    rep = R.audit(_crafted_log(tmp_path / "b.dgl", {"masks": real[:1, :, :, 0].copy()}, P.Kind.FAKE_REQUEST))
    assert not rep.ok and "not a mask" in rep.violations[0]
    # 3. a real image smuggled as the "gradient": only the near-duplicate check can see it
    smuggled = (real[2:3].transpose(0, 3, 1, 2).astype(np.float32) / 255.0) * 1e-3
    path = _crafted_log(tmp_path / "c.dgl", {"grad": smuggled})
    assert R.audit(path).ok
    rep = R.audit(path, real)
    assert not rep.ok and "real image 2" in rep.near_duplicates[0]
    # 4. an image under the name of an int8 gradient's scales: only per-sample steps beside int8 pass
    hidden = real[:1, :, :, 0].astype(np.float32)
    rep = R.audit(_crafted_log(tmp_path / "d.dgl", {"grad": grad, "grad_scales": hidden}))
    assert not rep.ok and "grad_scales must be" in rep.violations[0]
    pair = {"grad": np.ones((1, 3, 32, 32), np.int8), "grad_scales": np.full(1, 1e-3, np.float32)}
    assert R.audit(_crafted_log(tmp_path / "e.dgl", pair)).ok
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "a.dgl"), "--audit"])
    assert result.exit_code == 1 and "audit failed" in result.output


def test_summary_list_show_verify_and_images_from_the_cli(recorded_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, log = recorded_run
    runner = CliRunner()
    res = runner.invoke(app, ["replay", str(log)])
    assert res.exit_code == 0 and "FEEDBACK" in res.output and "node0" in res.output
    res = runner.invoke(app, ["replay", str(log), "--list", "--kind", "FEEDBACK", "--node", "node1"])
    assert res.exit_code == 0 and "FEEDBACK" in res.output and "node0" not in res.output
    res = runner.invoke(app, ["replay", str(log), "--verify"])
    assert res.exit_code == 0 and "complete records" in res.output
    first_fakes = next(r["index"] for r in R.list_messages(log, kind="FAKES"))
    res = runner.invoke(app, ["replay", str(log), "--show", str(first_fakes)])
    assert res.exit_code == 0 and '"fakes"' in res.output and '"shape"' in res.output
    assert R.save_images(log, tmp_path / "imgs") > 0
    assert any(p.name.endswith("fake000.png") for p in (tmp_path / "imgs").iterdir())
    damaged = tmp_path / "damaged.dgl"
    damaged.write_bytes(log.read_bytes()[:-7])
    res = runner.invoke(app, ["replay", str(damaged), "--verify"])
    assert res.exit_code == 1 and "truncated" in res.output


def test_send_replays_node_traffic_to_a_live_broker(recorded_run: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.conftest import start_broker

    _, log = recorded_run
    bp = start_broker(tmp_path)
    try:
        counts = R.send(log, bp.node, speed=None, timeout=1.0)
        sent_by_nodes = sum(1 for r in R.list_messages(log) if r["direction"] == "FROM_NODE")
        assert counts["sent"] == sent_by_nodes
        assert counts["replies"] > 0  # the broker answers (no generator: NO_GENERATOR errors)
        assert bp.proc.poll() is None
    finally:
        bp.proc.terminate()
        bp.proc.wait(10)
