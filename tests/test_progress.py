"""The experiment's GAN trainings log their progress: a line a minute with the rate and the time left, the DGAN's
nodes and judges, and a warning while the generator says nothing."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import pytest

import dgan.experiment as ex
import dgan.experiment_central as central
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits
from dgan.networks import ModelConfig
from dgan.progress import DGANProgress, ProgressLog, dgan_detail
from dgan.run import RunConfig
from dgan.training.checkpoints import save_atomic
from dgan.training.generator import GeneratorTrainer, TrainConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_most_once_per_interval_with_the_rate_from_the_first_step_and_the_time_left(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = ProgressLog("central_gan adversarial seed 0", 800, every=60.0, clock=clock)
    caplog.set_level(logging.INFO, "dgan.experiment")
    clock.now += 30  # start-up before the first step does not count towards the rate
    assert not progress.update(1)
    clock.now += 29
    assert not progress.update(30)
    clock.now += 30
    assert progress.update(60)  # a minute after it started; 59 steps in the 59 s since step 1
    assert caplog.messages[-1] == ("central_gan adversarial seed 0: step 60/800 (8%), 1.00 steps/s, "
                                   "about 12 min left")
    clock.now += 30
    assert not progress.update(90)
    clock.now += 30
    assert progress.update(120, "2/4 nodes alive")
    assert caplog.messages[-1].endswith("1.00 steps/s, about 11 min left; 2/4 nodes alive")
    clock.now += 60
    assert progress.update(800)
    assert caplog.messages[-1].startswith("central_gan adversarial seed 0: step 800/800 (100%)")
    assert "left" not in caplog.messages[-1]
    assert progress.lines == 3


def test_no_time_left_is_guessed_before_any_step_and_the_wait_for_the_first_step_is_not_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = ProgressLog("x", 10, every=1.0, clock=clock)
    caplog.set_level(logging.INFO, "dgan.experiment")
    progress.update(0)
    clock.now += 5
    assert progress.update(0)
    assert caplog.messages[-1] == "x: step 0/10 (0%), 0.00 steps/s"
    clock.now += 100  # the nodes' warm-up: 100 s at step 0 must not count towards the rate
    progress.update(1)
    clock.now += 2
    assert progress.update(5)
    assert caplog.messages[-1] == "x: step 5/10 (50%), 2.00 steps/s, about 2 s left"


def test_the_dgan_detail_counts_all_nodes_from_the_generators_totals_not_its_capped_list() -> None:
    status = {"nodes_alive": 70, "nodes_total": 100, "nodes": {"node0": {"alive": True, "staleness": 1.0}}}
    assert dgan_detail(status) == "70/100 nodes alive, mean staleness 1.0"


def test_the_dgan_detail_names_the_nodes_alive_their_staleness_and_the_judges() -> None:
    status = {"step": 10, "label_iou": 0.4121, "dropped_stale": 2, "nodes": {
        "node0": {"alive": True, "staleness": 2.0}, "node1": {"alive": True, "staleness": 3.0},
        "node2": {"alive": False, "staleness": 9.0}}}
    assert dgan_detail(status) == ("2/3 nodes alive, mean staleness 2.5, judges' label IoU 0.412, "
                                   "2 dropped stale")
    assert dgan_detail({**status, "discounted_stale": 5}).endswith("2 dropped stale, 5 applied discounted")
    assert dgan_detail({"nodes": {}}) == "0/0 nodes alive"
    assert dgan_detail({"nodes": "not a dict"}) == ""  # a status it cannot read gives no detail, not an error


class FakeSource:
    """Stands in for the status subscriber: each poll delivers the next scripted status (None: nothing new)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.generator: dict[str, Any] = {}
        self.closed = False
        self.endpoints: list[str] = []

    def poll(self, timeout: float = 0.0) -> bool:
        item = self.script.pop(0) if self.script else None
        if item is None:
            return False
        if item != "broker":  # the broker's own broadcast: news, but not from the generator
            self.generator = item
        return True

    def close(self) -> None:
        self.closed = True


def test_a_silent_generator_is_reported_once_a_minute_and_news_resets_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    source = FakeSource([{"step": 1, "nodes": {}}, None, None, None, {"step": 2, "nodes": {}}, None])
    watcher = DGANProgress("dgan adversarial seed 0", 800, every=60.0, subscribe=lambda _e: source, clock=clock)
    caplog.set_level(logging.INFO, "dgan.experiment")
    watcher.watch("tcp://127.0.0.1:5557")
    for _ in range(3):
        clock.now += 50
        watcher.watch("tcp://127.0.0.1:5557")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["dgan adversarial seed 0: no status from the generator for 100 s"]
    watcher.watch("tcp://127.0.0.1:5557")  # the status that arrives now is a step line, at most once a minute
    clock.now += 61
    watcher.watch("tcp://127.0.0.1:5557")  # quiet again for 61 s after news: one more warning
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2
    watcher.close()
    assert source.closed and watcher.source is None


def test_the_brokers_broadcasts_do_not_hide_a_silent_generator(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    source = FakeSource([{"step": 5, "nodes": {}}, "broker", "broker", "broker"])
    watcher = DGANProgress("dgan adversarial seed 0", 800, every=60.0, subscribe=lambda _e: source, clock=clock)
    caplog.set_level(logging.INFO, "dgan.experiment")
    watcher.watch("e")
    for _ in range(3):  # the broker keeps broadcasting; the generator's last status stays the same object
        clock.now += 25
        watcher.watch("e")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "dgan adversarial seed 0: no status from the generator for 75 s"]


def test_an_error_while_watching_is_logged_once_and_never_reaches_the_training(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeSource):
        def poll(self, timeout: float = 0.0) -> bool:
            raise OSError("too many open files")

    source = Broken([])
    watcher = DGANProgress("dgan adversarial seed 0", 800, subscribe=lambda _e: source)
    caplog.set_level(logging.INFO, "dgan.experiment")
    for _ in range(3):
        watcher.watch("e")  # does not raise
    assert watcher.failed and source.closed
    assert [r.getMessage() for r in caplog.records] == [
        "dgan adversarial seed 0: progress lines stop (OSError: too many open files); the training goes on"]


def _splits() -> Splits:
    ims, masks = make_scenes(range(4), 32)
    pairs = PairSet(ims, masks, ["a", "b", "c", "d"], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0, 1], [2, 3]], description={})


@pytest.mark.parametrize("fails", [False, True])
def test_the_experiments_dgan_logs_the_generators_progress_and_closes_its_subscription(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fails: bool) -> None:
    sources: list[FakeSource] = []

    def subscribe(endpoint: str) -> FakeSource:
        sources.append(FakeSource([{"step": s, "nodes": {"node0": {"alive": True, "staleness": 1.0},
                                                          "node1": {"alive": True, "staleness": 3.0}}}
                                   for s in (1, 2, 3)]))
        sources[-1].endpoints.append(endpoint)
        return sources[-1]

    monkeypatch.setattr(ex, "DGANProgress", functools.partial(DGANProgress, every=0.0, subscribe=subscribe))

    def fake_run_local(run: RunConfig, watch: Any = None) -> dict[str, object]:
        for _ in range(3):
            watch("tcp://127.0.0.1:5557")
        if fails:
            raise RuntimeError("the generator exited with 1")
        gen = GeneratorTrainer(ModelConfig(image_size=32, g_width=8, d_width=8), TrainConfig(seed=run.seed))
        (run.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_atomic(gen.state(), run.out / "checkpoints" / "latest.pt")
        return {"steps": 4}  # the run's summary: the last status went out before the last step

    monkeypatch.setattr(ex, "run_local", fake_run_local)
    caplog.set_level(logging.INFO, "dgan.experiment")
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    if fails:
        with pytest.raises(RuntimeError):
            ex.dgan_run(cfg, _splits(), "async", 0, "adversarial")
    else:
        ex.dgan_run(cfg, _splits(), "async", 0, "adversarial")
    lines = [m for m in caplog.messages if m.startswith("dgan adversarial seed 0: step")]
    assert lines[-1].startswith("dgan adversarial seed 0: step 3/4 (75%)")
    assert lines[-1].endswith("2/2 nodes alive, mean staleness 2.0")
    finished = [m for m in caplog.messages if "finished" in m]
    assert len(finished) == (0 if fails else 1)  # a training that failed is not reported finished
    assert all(m.startswith("dgan adversarial seed 0: finished, step 4/4") for m in finished)
    assert len(sources) == 1 and sources[0].closed and sources[0].endpoints == ["tcp://127.0.0.1:5557"]


def test_the_central_gan_logs_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(central, "ProgressLog", functools.partial(ProgressLog, every=0.0))
    caplog.set_level(logging.INFO, "dgan.experiment")
    ims, masks = make_scenes(range(4), 32)
    cfg = ex.ExperimentConfig(out=tmp_path, size=32, g_width=8, d_width=8, gan_steps=3, snapshots=0)
    central.central_gan(cfg, PairSet(ims, masks, ["a", "b", "c", "d"]), 0, "adversarial")
    lines = [m for m in caplog.messages if m.startswith("central_gan adversarial seed 0: step")]
    assert [m.split(" (")[0] for m in lines] == [f"central_gan adversarial seed 0: step {s}/3" for s in (1, 2, 3)]
    assert caplog.messages[-1].startswith("central_gan adversarial seed 0: finished, step 3/3, ")
