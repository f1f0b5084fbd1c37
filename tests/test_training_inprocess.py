"""The real generator service and nodes over the in-process transport (no sockets)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgan import protocol as P
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig
from dgan.networks import ModelConfig
from dgan.training.checkpoints import CheckpointError, load_checkpoint
from dgan.training.generator import GeneratorTrainer, TrainConfig
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import DiscriminatorNode, NodeConfig
from nodes.generator_service import GeneratorService, ServiceConfig

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def run_inprocess(tmp_path: Path, mode: str, steps: int, delays: tuple[float, ...] = (0.0, 0.0),
                  samples_dir: Path | None = None, update_every: int = 1, judge_after: int = 50,
                  transfer_every: int = 16) -> GeneratorService:
    hub = InProcessHub()
    trainer = GeneratorTrainer(MODEL, TrainConfig(steps=steps, mode=mode, fake_dtype="float32",
                                                  update_every=update_every))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path, sample_every=0,
                                                                            checkpoint_every=0))
    stop = threading.Event()
    threads = []
    for i, delay in enumerate(delays):
        images, masks = make_scenes(range(i * 100, i * 100 + 6), 32)
        link = hub.node_link(f"n{i}")
        link.send(P.make(P.Kind.HELLO, f"n{i}", meta={"role": "node", **DiscriminatorNode.hello_meta(images)}))
        node = DiscriminatorNode(link, images, masks, NodeConfig(f"n{i}", batch_size=2, delay=delay, seed=i,
                                                                 samples_dir=samples_dir, sample_every=5,
                                                                 feedback=FeedbackConfig(warmup=0),  # scheduling
                                                                 judge_after=judge_after,
                                                                 transfer_every=transfer_every))
        threads.append(threading.Thread(target=node.run, args=(stop,), daemon=True))
    for t in threads:
        t.start()
    service.run()
    stop.set()
    for t in threads:
        t.join(10)
    return service


def test_sync_mode_updates_once_per_round_with_every_node(tmp_path: Path) -> None:
    service = run_inprocess(tmp_path, "sync", steps=4)
    assert service.trainer.step == 4
    feedbacks = {n: i.feedbacks for n, i in service.nodes.items()}
    # every round waits for both nodes: equal counts (the last round may be cut by the end of the run)
    assert abs(feedbacks["n0"] - feedbacks["n1"]) <= 1 and min(feedbacks.values()) >= 4


def test_async_mode_lets_a_fast_node_run_ahead_of_a_slow_one(tmp_path: Path) -> None:
    service = run_inprocess(tmp_path, "async", steps=12, delays=(0.0, 0.5), samples_dir=tmp_path / "local")
    fast, slow = service.nodes["n0"].feedbacks, service.nodes["n1"].feedbacks
    grids = sorted((tmp_path / "local").glob("n0_batch*.png"))  # mask | real | synthetic, on the node's disk
    assert grids and Image.open(grids[0]).size == (3 * 32, 2 * 32)
    assert fast > 2 * slow, (fast, slow)
    summary = (tmp_path / "run.json").read_text()
    assert '"synthetic_images": 12' in summary  # 6 masks uploaded by each node


def test_buffered_async_runs_to_its_steps_and_nodes_report_label_consistency(tmp_path: Path) -> None:
    import json

    service = run_inprocess(tmp_path, "async", steps=6, update_every=0, judge_after=2, transfer_every=2)
    assert service.trainer.step == 6  # the exact schedule is pinned without threads in test_round_policy.py
    applied = sum(i.feedbacks for i in service.nodes.values())
    assert applied >= 6
    rows = [json.loads(line) for line in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    columns = json.loads((tmp_path / "feedback.json").read_text())["columns"]
    judged = [r[columns.index("label_iou")] for r in rows if r[columns.index("label_iou")] is not None]
    assert judged and all(0.0 <= v <= 1.0 for v in judged)  # the judges' scalar reached the generator
    transfer = [r[columns.index("transfer_iou")] for r in rows if r[columns.index("transfer_iou")] is not None]
    assert transfer and all(0.0 <= v <= 1.0 for v in transfer)  # ... and the trained-on-fakes one, every 2nd batch
    assert len(transfer) <= applied // 2
    assert "transfer_iou_best" in json.loads((tmp_path / "run.json").read_text())


def test_checkpoint_restores_step_optimizer_and_rng(tmp_path: Path) -> None:
    _, masks = make_scenes(range(2), 32)
    a = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32"))
    fakes = a.generate("n", 1, masks)
    a.apply_feedback("n", 1, np.ones_like(fakes), 1.0)
    a.update()
    a.save(tmp_path / "c.pt")
    expected_next = torch.rand(3)
    b = GeneratorTrainer(MODEL, TrainConfig(seed=9, fake_dtype="float32"))
    b.load(tmp_path / "c.pt")
    assert b.step == 1
    assert torch.equal(torch.rand(3), expected_next)
    for p, q in zip(a.G.parameters(), b.G.parameters(), strict=True):
        assert torch.equal(p, q)
    assert b.opt.state_dict()["state"][0]["step"] == a.opt.state_dict()["state"][0]["step"]


def test_corrupt_checkpoint_gives_an_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pt"):
        load_checkpoint(bad)


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path: Path) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from dgan.cli import app

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here; the message is for machines without it")
    res = CliRunner().invoke(app, ["generator", "--out", str(tmp_path), "--tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 2 and "pip install tensorboard" in res.output


def test_checkpoint_restores_numpy_and_python_rng_too(tmp_path: Path) -> None:
    import random

    a = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32"))
    np.random.seed(5)
    random.seed(3)
    a.save(tmp_path / "c.pt")
    expected = (np.random.rand(), random.random())
    np.random.seed(1)
    random.seed(1)
    a.load(tmp_path / "c.pt")
    assert (np.random.rand(), random.random()) == expected


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (print, ("this ran at load time",))


def test_a_checkpoint_that_would_run_code_at_load_is_refused(tmp_path: Path) -> None:
    GeneratorTrainer(MODEL, TrainConfig()).save(tmp_path / "good.pt")
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    state["extra"] = _RunsCode()
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=r"crafted\.pt"):
        load_checkpoint(tmp_path / "crafted.pt")
