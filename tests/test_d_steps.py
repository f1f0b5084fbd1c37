"""D steps per feedback (`dgan node --d-steps`, `dgan experiment --d-steps`): a node's D keeps the central D's pace."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

import dgan.experiment as ex
from dgan import protocol as P
from dgan.cli import app
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits, _recipe_key, gan_training_key
from dgan.feedback import DEFAULT_D_STEPS, FeedbackConfig, FeedbackMode, default_d_steps
from dgan.finished_runs import launch_fingerprint
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer, PairSampler
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import DiscriminatorNode, NodeConfig, Outstanding

MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def _adam_steps(trainer: DiscriminatorTrainer) -> int:
    """How many optimiser steps D has taken (Adam keeps the count per parameter)."""
    return int(next(iter(trainer.opt.state.values()))["step"])


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, masks = make_scenes(range(seed, seed + 2), 32)
    return masks, images


@pytest.mark.parametrize("bad", [0, 17, -1, True, 1.5])
def test_a_d_step_count_outside_one_to_sixteen_or_not_a_whole_number_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="d_steps must be a whole number from 1 to 16"):
        FeedbackConfig(d_steps=bad)  # type: ignore[arg-type]


def test_more_d_steps_are_refused_in_segmentation_mode_whose_labelmix_pairs_each_real_batch_with_its_fakes() -> None:
    with pytest.raises(ValueError, match="segmentation"):
        FeedbackConfig(FeedbackMode.SEGMENTATION, d_steps=2)


def test_score_takes_exactly_the_further_real_batches_its_recipe_asks_for() -> None:
    masks, images = _batch(0)
    fakes = np.zeros((2, 3, 32, 32), np.float32)
    three = DiscriminatorTrainer(MODEL, FeedbackConfig(warmup=0, d_steps=3), seed=0)
    for given in ([], [_batch(2)], [_batch(2)] * 3):  # a caller that forgets them would silently step once
        with pytest.raises(ValueError, match="needs 2 further real batch"):
            three.score(masks, images, fakes, more_reals=given)
    with pytest.raises(ValueError, match="needs 0 further"):
        DiscriminatorTrainer(MODEL, FeedbackConfig(warmup=0), seed=0).score(masks, images, fakes,
                                                                            more_reals=[_batch(2)])


def test_each_further_real_batch_is_one_more_d_step_before_the_gradient_and_changes_it() -> None:
    masks, images = _batch(0)
    fakes = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    one = DiscriminatorTrainer(MODEL, FeedbackConfig(warmup=0), seed=3)
    three = DiscriminatorTrainer(MODEL, FeedbackConfig(warmup=0, d_steps=3), seed=3)
    g1 = one.score(masks, images, fakes)
    g3 = three.score(masks, images, fakes, more_reals=[_batch(2), _batch(4)])
    assert (_adam_steps(one), _adam_steps(three)) == (1, 3)
    assert g3.grad.shape == g1.grad.shape and not np.allclose(g3.grad, g1.grad)  # a D that stepped more judges
    # the reported losses are the last step's, on the request's own real batch: D has learnt to call it real
    assert set(g3.losses) == set(g1.losses) and g3.losses["d_real"] < g1.losses["d_real"]


def test_a_node_takes_its_d_steps_per_feedback_from_its_own_sampler() -> None:
    images, masks = make_scenes(range(6), 32)
    node = DiscriminatorNode(InProcessHub().node_link("n0"), images, masks,
                             NodeConfig("n0", batch_size=2, judge=False, feedback=FeedbackConfig(warmup=0, d_steps=4)))
    node.trainer, node.run_id = DiscriminatorTrainer(MODEL, node.cfg.feedback, seed=1), "r1"
    node.sampler = PairSampler(images, masks, 32)
    fakes = np.zeros((2, 3, 32, 32), np.float32)
    for key in (7, 8):
        node.outstanding[key] = Outstanding(masks[:2], images[:2], 0.0)
        node._on_fakes(P.make(P.Kind.FAKES, "generator", reply_to=key, tensors={"fakes": fakes}))
    assert _adam_steps(node.trainer) == 8  # 2 feedbacks x 4 steps
    assert node.stats.batches == 2


def test_experiment_d_steps_reach_the_nodes_only_and_a_run_at_one_keeps_its_fingerprint_and_folder(
        tmp_path: Path) -> None:
    ims, ms = make_scenes(range(2), 32)
    pairs = PairSet(ims, ms, ["a", "b"], {}, ("background", "building"))
    splits = Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0], [1]], description={})
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2)
    one, four = replace(base, d_steps=1), replace(base, d_steps=4)
    default, plain, more = (ex.dgan_launch(c, splits, "async", 0, "adversarial") for c in (base, one, four))
    assert default.node_args[default.node_args.index("--d-steps") + 1] == str(DEFAULT_D_STEPS) == "2"
    assert default.out.name == "dgan_async_adversarial_d2_seed0"  # as `--d-steps 2` before it was the default
    assert plain.node_args[plain.node_args.index("--d-steps") + 1] == "1"  # said: the nodes' default is 2
    assert plain.out.name == "dgan_async_adversarial_seed0"
    i = plain.node_args.index("--d-steps")
    before = replace(plain, node_args=plain.node_args[:i] + plain.node_args[i + 2:])  # how runs at 1 were launched
    assert launch_fingerprint(before) == launch_fingerprint(plain)  # so a run at 1 that finished then is found
    assert more.node_args[more.node_args.index("--d-steps") + 1] == "4"
    assert more.out.name == "dgan_async_adversarial_d4_seed0"  # its own folder: switching back finds the first
    assert len({str(launch_fingerprint(r)) for r in (default, plain, more)}) == 3
    # the central GAN's D already steps once per G step: its trainings and cached results are shared, and the keys
    # made before d_steps existed stay valid (the recipe in them has no such field at the default)
    assert "d_steps" not in _recipe_key(base, "adversarial") and "d_steps" not in _recipe_key(four, "adversarial")
    assert gan_training_key(four, splits, "adversarial") == gan_training_key(base, splits, "adversarial")
    assert ex.cache_key(four, splits, "central_gan", "adversarial") == ex.cache_key(
        base, splits, "central_gan", "adversarial")
    with pytest.raises(ex.ExperimentSetupError, match="d_steps"):
        replace(base, d_steps=0)
    with pytest.raises(ex.ExperimentSetupError, match="segmentation"):
        replace(base, feedback=("segmentation",), d_steps=2)
    segmentation = replace(base, feedback=("segmentation",))  # the default there is one
    assert segmentation.node_recipe("segmentation").d_steps == 1


def test_the_default_is_two_d_steps_on_the_patchgan_modes_and_one_in_segmentation() -> None:
    assert [default_d_steps(m) for m in FeedbackMode] == [1 if m == FeedbackMode.SEGMENTATION else 2
                                                          for m in FeedbackMode]
    assert FeedbackConfig().d_steps == 1  # the library's recipe (the central GAN's D) is unchanged


def test_a_node_started_without_d_steps_takes_the_default_of_its_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.discriminator_node as dn
    from dgan.transport import zmq_link

    seen: list[FeedbackConfig] = []

    class Node:
        hello_meta = staticmethod(dn.DiscriminatorNode.hello_meta)

        def __init__(self, link: object, images: object, masks: object, cfg: NodeConfig) -> None:
            seen.append(cfg.feedback)
            self.fatal = None

        def run(self, max_batches: int | None = None) -> SimpleNamespace:
            return SimpleNamespace(batches=0, samples=0)

    class Link:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.counters: dict[str, int] = {}

        def close(self) -> None:
            pass

    monkeypatch.setattr(dn, "DiscriminatorNode", Node)
    monkeypatch.setattr(zmq_link, "ZmqNodeLink", Link)
    for extra, steps in (([], 2), (["--feedback", "segmentation"], 1), (["--d-steps", "3"], 3)):
        res = CliRunner().invoke(app, ["node", "--name", "dept", "--count", "4", "--image-size", "32",
                                       "--broker", "tcp://127.0.0.1:1", *extra])
        assert res.exit_code == 0, res.output
        assert seen[-1].d_steps == steps


def test_the_node_command_refuses_a_bad_d_step_count_before_it_connects() -> None:
    res = CliRunner().invoke(app, ["node", "--name", "dept", "--d-steps", "0", "--broker", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--d-steps" in res.output
    res = CliRunner().invoke(app, ["node", "--name", "dept", "--feedback", "segmentation", "--d-steps", "2",
                                   "--broker", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "segmentation" in res.output


def test_dgan_run_hands_the_d_steps_to_every_node_and_refuses_a_bad_count(tmp_path: Path, started_runs: list) -> None:
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "x"), "--d-steps", "4"])
    assert res.exit_code == 0, res.output
    args = started_runs[0].node_args  # every node process gets these
    assert args[args.index("--d-steps") + 1] == "4"
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "y"), "--d-steps", "17"])
    assert res.exit_code == 2 and "--d-steps" in res.output and len(started_runs) == 1
    for extra, steps in (([], "2"), (["--feedback", "segmentation"], "1")):  # each mode's default, said to the nodes
        res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / f"d{steps}"), *extra])
        assert res.exit_code == 0, res.output
        args = started_runs[-1].node_args
        assert args[args.index("--d-steps") + 1] == steps


def test_the_results_say_how_many_d_steps_the_nodes_took_per_mode_and_whether_by_default() -> None:
    from dgan.experiment_tables import arithmetic_line

    both = {"config": {"d_steps": None, "feedback": ["adversarial", "segmentation"]}}
    assert "DGAN nodes: discriminator steps per feedback 2 in adversarial, 1 in segmentation (the nodes' default; " \
        "the central GAN's D" in arithmetic_line(both)[0]
    assert "DGAN nodes: 2 discriminator steps per feedback (the nodes' default; the" in arithmetic_line(
        {"config": {"d_steps": None, "feedback": ["adversarial"]}})[0]
    assert "4 discriminator steps" in arithmetic_line({"config": {"d_steps": 4}})[0]  # no modes listed
    assert "DGAN nodes: 4 discriminator steps per feedback (the central" in arithmetic_line(
        {"config": {"d_steps": 4, "feedback": ["adversarial"]}})[0]
    for one in ({"config": {"d_steps": 1, "feedback": ["adversarial"]}},  # said, or from before the setting
                {"config": {"feedback": ["adversarial"]}}, {"config": {"d_steps": None, "feedback": ["segmentation"]}}):
        assert arithmetic_line(one) == []


def test_sync_rounds_default_to_one_d_step_which_is_already_the_generators_pace(
        tmp_path: Path, started_runs: list) -> None:
    ims, ms = make_scenes(range(2), 32)
    pairs = PairSet(ims, ms, ["a", "b"], {}, ("background", "building"))
    splits = Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0], [1]], description={})
    base = ex.ExperimentConfig(out=tmp_path, size=32, nodes=2)
    sync = ex.dgan_launch(base, splits, "sync", 0, "adversarial")
    assert sync.node_args[sync.node_args.index("--d-steps") + 1] == "1" and sync.out.name == \
        "dgan_sync_adversarial_seed0"  # where --with-sync's trainings finished before, found again
    said = ex.dgan_launch(replace(base, d_steps=2), splits, "sync", 0, "adversarial")
    assert said.node_args[said.node_args.index("--d-steps") + 1] == "2"  # asked for: given
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "s"), "--mode", "sync"])
    assert res.exit_code == 0, res.output
    args = started_runs[-1].node_args
    assert args[args.index("--d-steps") + 1] == "1"


def test_the_experiment_command_leaves_the_d_steps_to_each_mode_unless_asked(
        tmp_path: Path, captured_experiments: list) -> None:
    got = captured_experiments
    for extra, steps in (([], None), (["--d-steps", "3"], 3)):
        res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), *extra])
        assert res.exit_code == 2 and "captured" in res.output, res.output
        assert got[-1].d_steps == steps
    assert got[0].node_recipe("adversarial").d_steps == 2
