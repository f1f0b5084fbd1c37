"""The generator's update rules: buffered async, the weight average, and the staleness each rule gives."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.update_rule import RULES, simulate
from dgan.experiment import ExperimentConfig, make_splits, synthesize_set
from dgan.networks import ModelConfig
from dgan.training.checkpoints import load_checkpoint
from dgan.training.generator import GeneratorTrainer, TrainConfig
from tests.conftest import feedback_step, proc_stat, running

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_ema_weights_trail_the_raw_ones_and_synthesis_uses_them(tmp_path: Path) -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(ema=0.9, fake_dtype="float32", lr=1e-2))
    assert trainer.G_ema is not None
    start = [p.detach().clone() for p in trainer.G.parameters()]
    for k in range(6):
        feedback_step(trainer, k)
    raw, avg = [p.detach() for p in trainer.G.parameters()], [p.detach() for p in trainer.G_ema.parameters()]
    moved = sum(float((r - s).abs().sum()) for r, s in zip(raw, start, strict=True))
    behind = sum(float((a - r).abs().sum()) for a, r in zip(avg, raw, strict=True))
    assert moved > 0 and 0 < behind < moved  # the average lags the weights, but has left the initial ones
    masks = np.zeros((3, 32, 32), np.uint8)
    assert not np.array_equal(trainer.synthesize(masks, weights="ema"), trainer.synthesize(masks, weights="raw"))
    trainer.save(tmp_path / "g.pt")
    again = GeneratorTrainer.from_state(load_checkpoint(tmp_path / "g.pt"))
    assert again.G_ema is not None
    for a, b in zip(again.G_ema.state_dict().values(), trainer.G_ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(again.synthesize(masks), trainer.synthesize(masks))


def test_without_ema_synthesis_uses_the_raw_weights_and_bad_settings_are_refused() -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32"))
    assert trainer.G_ema is None
    masks = np.zeros((2, 32, 32), np.uint8)
    assert np.array_equal(trainer.synthesize(masks, weights="ema"), trainer.synthesize(masks, weights="raw"))
    with pytest.raises(ValueError, match="ema is a decay"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="update_every must be >= 0"):
        TrainConfig(update_every=-2)  # -1 is the staleness-aware buffer; below it is refused


TINY = ExperimentConfig(out=Path("/nonexistent"), size=32, g_width=8, d_width=8, scenes=24, partition="iid",
                        quick=True)


@pytest.mark.parametrize(("rule", "lo", "hi", "steps", "nodes"), [
    ("async", 6.0, 7.0, 40, 4),  # 4 nodes x pipeline 2: every step follows one D, 7 steps stale
    ("async-p1", 2.5, 3.0, 40, 4),
    ("buffered", 1.0, 1.75, 10, 4),  # one step per 4 feedbacks: the staleness falls 4-fold
    ("sync", 0.0, 0.0, 10, 4),
    ("central", 0.0, 0.0, 40, 1),  # one D on the pooled pairs answers everything
    ("central-p8", 6.0, 7.0, 40, 1),  # one pooled D, as stale as async (8 requests in flight)
    ("serial", 0.0, 0.0, 40, 4),  # the 4 nodes' own Ds in turn, never stale
    ("async-int8", 6.0, 7.0, 40, 4),  # the wire's smallest encodings: the same schedule
])
def test_simulated_schedule_gives_each_rule_its_staleness_and_its_discriminators(
        rule: str, lo: float, hi: float, steps: int, nodes: int) -> None:
    splits = make_splits(TINY)
    gen, stats = simulate(TINY, splits, RULES[rule], seed=0, feedbacks=40, feedback="adversarial", speeds=[1.0],
                          ema=0.9)
    assert stats["steps"] == steps
    assert lo <= stats["staleness_mean"] <= hi
    assert stats["served"] == {f"node{i}": 40 // nodes for i in range(nodes)}  # equal speeds: equal shares
    syn = synthesize_set(gen, splits.train.masks[:4], 1)
    assert syn.images.shape == (4, 32, 32, 3)


def _generator_move(cfg: ExperimentConfig, rule: str, feedbacks: int) -> torch.Tensor:
    """How far a simulated training moves G's weights from where seed 0 starts them (all floats, flattened)."""
    start = GeneratorTrainer(cfg.model(), TrainConfig(seed=0)).G.state_dict()
    gen, _ = simulate(cfg, make_splits(cfg), RULES[rule], seed=0, feedbacks=feedbacks, feedback="adversarial",
                      speeds=[1.0], ema=0.0)
    return torch.cat([(p - start[n]).flatten() for n, p in gen.G.state_dict().items() if p.dtype.is_floating_point])


def test_the_wire_encodings_are_paired_with_async_and_move_the_generator_almost_alike() -> None:
    moved = {rule: _generator_move(TINY, rule, 12) for rule in ("async", "async-f16", "async-int8")}
    for rule in ("async-f16", "async-int8"):  # same seeds and schedule: the encoding is the only difference
        diff = float((moved[rule] - moved["async"]).norm() / moved["async"].norm())
        assert 0 < diff < 0.5, (rule, diff)


def test_equal_weighting_differs_from_size_weighting_only_where_the_nodes_differ_in_size() -> None:
    same = {rule: _generator_move(TINY, rule, 8) for rule in ("async-p1-f16", "async-p1-eq")}  # iid: equal sizes
    assert torch.equal(same["async-p1-f16"], same["async-p1-eq"])
    uneven = replace(TINY, partition="size")
    assert len({len(p) for p in make_splits(uneven).node_parts}) > 1
    moved = {rule: _generator_move(uneven, rule, 8) for rule in ("async-p1-f16", "async-p1-eq")}
    assert float((moved["async-p1-eq"] - moved["async-p1-f16"]).norm()) > 0.01 * float(moved["async-p1-f16"].norm())


def test_simulated_nodes_take_their_own_colour_figures_and_the_term_moves_the_generator() -> None:
    # a node without its figures would refuse to score: simulate must give them
    moved = {weight: _generator_move(replace(TINY, lambda_colour=weight), "async", 8) for weight in (0.0, 10.0)}
    assert float((moved[10.0] - moved[0.0]).norm()) > 0.01 * float(moved[0.0].norm())


def test_bench_update_rule_refuses_a_bad_colour_weight_in_one_line() -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    for bad in ("-1", "nan"):
        res = CliRunner().invoke(app, ["bench", "update-rule", "--quick", "--lambda-colour", bad])
        assert res.exit_code == 2 and "must be >= 0" in res.output, res.output


def test_judged_weights_are_kept_checkpointed_and_chosen_for_synthesis(tmp_path: Path) -> None:
    trainer = GeneratorTrainer(MODEL, TrainConfig(fake_dtype="float32", lr=1e-2))
    masks = np.zeros((2, 32, 32), np.uint8)
    assert np.array_equal(trainer.synthesize(masks, weights="judged"), trainer.synthesize(masks, weights="raw"))
    feedback_step(trainer, 1)
    trainer.keep_judged(0.3)  # the judges peaked here
    at_peak = trainer.synthesize(masks, weights="raw")
    for k in range(2, 5):
        feedback_step(trainer, k)
    assert trainer.judged is not None and trainer.judged[0] == 1
    assert np.array_equal(trainer.synthesize(masks, weights="judged"), at_peak)
    assert not np.array_equal(trainer.synthesize(masks, weights="raw"), at_peak)
    trainer.save(tmp_path / "g.pt")
    again = GeneratorTrainer.from_state(load_checkpoint(tmp_path / "g.pt"))
    assert again.judged is not None and again.judged[0] == 1 and again.judged_score == 0.3
    assert np.array_equal(again.synthesize(masks, weights="judged"), at_peak)
    old = {k: v for k, v in trainer.state().items() if k != "judged_by"}  # a checkpoint from before session 14
    older = GeneratorTrainer.from_state(old)  # its weights and score were chosen by label_iou: not kept
    assert older.judged is None and older.judged_score is None
    assert np.array_equal(older.synthesize(masks, weights="judged"), older.synthesize(masks, weights="raw"))
    with pytest.raises(ValueError, match="weights must be one of"):
        trainer.synthesize(masks, weights="best")


def test_bench_update_rule_refuses_an_unknown_rule_in_one_line() -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    res = CliRunner().invoke(app, ["bench", "update-rule", "--rule", "fastest"])
    assert res.exit_code == 2 and "unknown rule 'fastest'" in res.output


def test_bench_update_rule_deals_the_pairs_by_the_partition_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import benchmarks.update_rule as ur
    from dgan.cli import app

    seen: list[ExperimentConfig] = []

    def first_training(args: tuple[ExperimentConfig, ...]) -> dict[str, object]:
        seen.append(args[0])
        raise RuntimeError("captured")

    monkeypatch.setattr(ur, "_one", first_training)
    for partition in ("iid", "group"):
        res = CliRunner().invoke(app, ["bench", "update-rule", "--quick", "--rule", "async", "--jobs", "1",
                                       "--partition", partition])
        assert isinstance(res.exception, RuntimeError), res.output
        assert seen[-1].partition == partition
    res = CliRunner().invoke(app, ["bench", "update-rule", "--partition", "tiles"])
    assert res.exit_code == 2 and "tiles" in res.output


def test_a_later_bench_run_can_add_gan_seeds_to_an_earlier_ones() -> None:
    from typer.testing import CliRunner

    from benchmarks.update_rule import gan_seed_range
    from dgan.cli import app

    assert list(gan_seed_range(0, 2)) == [0, 1] and list(gan_seed_range(5, 3)) == [5, 6, 7]
    for first, n in ((-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="first-seed"):
            gan_seed_range(first, n)
    res = CliRunner().invoke(app, ["bench", "update-rule", "--first-seed", "-3"])
    assert res.exit_code == 2 and "--first-seed >= 0" in res.output


@pytest.mark.parametrize(("rule", "beta1", "lr"), [("async-f16", 0.5, 2e-4), ("async-b0", 0.0, 2e-4),
                                                   ("async-lr05", 0.5, 1e-4)])
def test_the_staleness_fixes_change_only_the_generators_adam(rule: str, beta1: float, lr: float) -> None:
    gen, stats = simulate(TINY, make_splits(TINY), RULES[rule], seed=0, feedbacks=8, feedback="adversarial",
                          speeds=[1.0], ema=0.0)
    group = gen.opt.param_groups[0]
    assert group["betas"][0] == beta1 and group["lr"] == pytest.approx(lr)
    assert stats["steps"] == 8 and stats["staleness_mean"] > 0  # the same async schedule as dgan's rule


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_the_benchmarks_pool_workers_die_with_it() -> None:
    """Killing the benchmark must not leave its workers training for an hour on the machine's cores."""
    script = (
        "import os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from dgan.stop_signals import die_with_parent\n"
        "pool = ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=die_with_parent,\n"
        "                           initargs=(os.getpid(),))\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "pool.submit(time.sleep, 120)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    worker, started = 0, ""
    try:
        assert select.select([proc.stdout], [], [], 120)[0], "the pool never started"
        worker = int(proc.stdout.readline())
        stat = proc_stat(worker)
        assert stat is not None
        started = stat[2]
        assert running(worker, started)  # alive while the benchmark is
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and running(worker, started):
            time.sleep(0.1)
        assert not running(worker, started), "the worker outlived the benchmark"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        if worker and running(worker, started):  # the test failed: do not leave it sleeping either
            os.kill(worker, signal.SIGKILL)


def test_the_bf16_channels_last_rule_trains_the_simulated_generator_in_both() -> None:
    gen, stats = simulate(TINY, make_splits(TINY), RULES["async-p1-f16-bf16-cl"], seed=0, feedbacks=4,
                          feedback="adversarial", speeds=[1.0], ema=0.0)
    assert stats["steps"] == 4 and gen.precision == "bf16" and gen.cfg.channels_last
    conv = max((p for p in gen.G.parameters() if p.dim() == 4), key=lambda p: p.shape[1] * p.shape[2])
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_a_slow_nodes_feedbacks_are_dropped_by_the_bound_and_kept_discounted_in_the_simulation() -> None:
    """Paired with no bound (async-f16): node3 answers 2.5x slower, so most of its answers come back past 8 steps."""
    splits = make_splits(TINY)
    got = {rule: simulate(TINY, splits, RULES[rule], seed=0, feedbacks=60, feedback="adversarial",
                          speeds=[1.0, 1.0, 1.0, 2.5], ema=0.0)[1]
           for rule in ("async-f16", "async-f16-bound8", "async-f16-discount8")}
    assert all(s["served"] == got["async-f16"]["served"] for s in got.values())  # one schedule for all three
    slow = {rule: s["applied_weight"]["node3"] for rule, s in got.items()}
    served = got["async-f16"]["served"]["node3"]
    assert served >= 5 and slow["async-f16"] == served  # no bound: every answer at full weight
    assert slow["async-f16-bound8"] < 0.5 * served  # the bound shuts most of the slow node out
    assert slow["async-f16-bound8"] < slow["async-f16-discount8"] < served  # discounted: in, at a cut weight
    assert got["async-f16-discount8"]["staleness_max"] > 8
