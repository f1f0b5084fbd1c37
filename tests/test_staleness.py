"""The staleness rule: what a feedback past the bound counts for, in the trainer and in the service's books."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgan import protocol as P
from dgan.data.scenes import make_scenes
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig
from dgan.training.staleness import DISCOUNT_CAP, drop_reason, stale_weight
from dgan.transport.inproc import InProcessHub
from nodes.generator_service import GeneratorService, ServiceConfig
from tests.conftest import feedback_for, one_node_service

CFG = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_drop_keeps_full_weight_up_to_the_bound_and_drops_past_it() -> None:
    assert [stale_weight(s, 8) for s in (0, 5, 8)] == [1.0, 1.0, 1.0]
    assert stale_weight(9, 8) is None and stale_weight(100, 8) is None


def test_discount_weighs_a_feedback_past_the_bound_by_bound_over_staleness_up_to_the_cap() -> None:
    assert stale_weight(8, 8, "discount") == 1.0
    assert stale_weight(16, 8, "discount") == 0.5
    assert stale_weight(DISCOUNT_CAP * 8, 8, "discount") == pytest.approx(1 / DISCOUNT_CAP)
    assert stale_weight(DISCOUNT_CAP * 8 + 1, 8, "discount") is None  # a generator long gone steers nothing
    assert stale_weight(1, 0, "discount") is None  # a bound of 0 leaves no room to discount in


def test_an_unknown_stale_policy_or_a_negative_bound_is_refused_by_the_rule_and_the_config() -> None:
    with pytest.raises(ValueError, match="stale policy"):
        stale_weight(9, 8, "keep")
    with pytest.raises(ValueError, match="stale_policy"):
        TrainConfig(stale_policy="keep")
    with pytest.raises(ValueError, match="max_staleness"):
        TrainConfig(max_staleness=-1)


def test_dgan_generator_refuses_an_unknown_stale_policy_in_one_line() -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    res = CliRunner().invoke(app, ["generator", "--broker", "tcp://127.0.0.1:1", "--stale-policy", "keep"])
    assert res.exit_code == 2 and "stale-policy" in res.output and "Traceback" not in res.output


def test_the_drop_reason_names_the_limit_that_applied() -> None:
    assert drop_reason(9, 8, "drop") == "staleness 9 > 8"
    assert drop_reason(33, 8, "discount").startswith(f"staleness 33 > {DISCOUNT_CAP * 8} ")


def _two_steps_stale(policy: str, bound: int, weight: float = 1.0) -> tuple[GeneratorTrainer, Outcome, int]:
    """A feedback on fakes made before two generator steps, with fixed gradients throughout."""
    _, masks = make_scenes(range(2), 32)
    gen = GeneratorTrainer(CFG, TrainConfig(seed=3, max_staleness=bound, stale_policy=policy, fake_dtype="float32"))
    old = gen.generate("n0", 100, masks)
    rng = np.random.default_rng(0)
    for key in (1, 2):
        fakes = gen.generate("n0", key, masks)
        assert gen.apply_feedback("n0", key, rng.standard_normal(fakes.shape).astype(np.float32) * 1e-3)[0] == \
            Outcome.APPLIED
        assert gen.update()
    grad = np.random.default_rng(1).standard_normal(old.shape).astype(np.float32)
    outcome, staleness, _ = gen.apply_feedback("n0", 100, grad, weight=weight)
    return gen, outcome, staleness


def test_the_trainer_applies_a_feedback_past_the_bound_at_the_discounted_weight() -> None:
    full, outcome, staleness = _two_steps_stale("drop", 10)
    assert (outcome, staleness) == (Outcome.APPLIED, 2)
    cut, outcome, staleness = _two_steps_stale("discount", 1)
    assert (outcome, staleness) == (Outcome.DISCOUNTED, 2) and cut.pending == 1
    assert full._acc is not None and cut._acc is not None
    for a, b in zip(cut._acc, full._acc, strict=True):
        torch.testing.assert_close(a, b * 0.5)  # bound 1 / staleness 2
    assert any(a.abs().sum() > 0 for a in cut._acc)  # the comparison is not of two zero gradients
    dropped, outcome, _ = _two_steps_stale("drop", 1)
    assert outcome == Outcome.DROPPED_STALE and dropped.pending == 0
    sized, outcome, _ = _two_steps_stale("discount", 1, weight=2.0)  # a node twice the mean size: both factors
    assert outcome == Outcome.DISCOUNTED and sized._acc is not None
    for a, b in zip(sized._acc, full._acc, strict=True):
        torch.testing.assert_close(a, b)  # 2 x 1/2


@pytest.mark.parametrize("policy", ["drop", "discount"])
def test_the_service_counts_a_discounted_feedback_as_applied_and_says_so(tmp_path: Path, policy: str) -> None:
    service, trainer, fakes = one_node_service(tmp_path, 3, max_staleness=1, stale_policy=policy)
    for f in (fakes[1], fakes[2], fakes[0]):  # staleness 0, 1, then 2: past the bound of 1
        service.handle("a", feedback_for(f))
    node = service.nodes["a"]
    status = service.status()["nodes"]["a"]
    if policy == "discount":
        assert trainer.step == 3 and node.feedbacks == 3
        assert node.counts["discounted_stale"] == 1 == service.counters["discounted_stale"]
        assert (status["discounted_stale"], status["dropped_stale"]) == (1, 0)
        assert node.counts["dropped_stale"] == 0
    else:
        assert trainer.step == 2 and node.feedbacks == 2
        assert node.counts["dropped_stale"] == 1 and node.counts["discounted_stale"] == 0


@pytest.mark.parametrize("policy", ["drop", "discount"])
def test_the_generator_warns_once_of_a_node_whose_feedbacks_mostly_arrive_too_stale(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str) -> None:
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=10, stale_policy=policy))
    service = GeneratorService(InProcessHub().generator_link(), trainer, ServiceConfig(
        out=tmp_path, sample_every=0, checkpoint_every=0, synthesize=False))
    for name, applied, dropped in (("slow", 3, 12), ("busy", 40, 12), ("new", 0, 4)):
        service.handle(name, P.make(P.Kind.HELLO, name, meta={"role": "node", "dataset_size": 1}))
        service.nodes[name].feedbacks, service.nodes[name].counts["dropped_stale"] = applied, dropped
    with caplog.at_level("WARNING", logger="dgan"):
        service._warn_shut_out()
        service._warn_shut_out()
    warned = [r.getMessage() for r in caplog.records if "too stale" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("generator: node slow: 12 of its 15 feedbacks")
    assert warned[0].endswith("--stale-policy discount applies them at a cut weight" if policy == "drop" else
                              f"even discounting stops at {DISCOUNT_CAP}x --max-staleness")  # the way out, or none
    status = service.status()
    assert status["nodes"]["slow"]["dropped_stale"] == 12 and status["discounted_stale"] == 0


def test_the_live_panel_marks_a_node_whose_feedbacks_are_mostly_dropped() -> None:
    import os

    from rich.console import Console

    from dgan.live import render

    console = Console(width=220, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    nodes = {"slow": {"alive": True, "batches": 2, "dropped_stale": 22}, "fast": {"alive": True, "batches": 90,
                                                                                "dropped_stale": 1}}
    console.print(render({"step": 3, "steps": 9, "dropped_stale": 23, "discounted_stale": 5, "nodes": nodes}, {}))
    assert "dropped stale 23 (5 discounted)" in console.export_text(clear=False)
    text = console.export_text(styles=True)
    assert "\x1b[31m22" in text and "\x1b[31m1\x1b" not in text  # red for the shut-out node only
