"""Wire dtypes mean what they say (uint8 fakes are quantised from [-1, 1]); every CLI choice is checked."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dgan.cli import app
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig
from dgan.networks import ModelConfig
from dgan.training.discriminator import DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, TrainConfig

TINY = ModelConfig(image_size=32, g_width=8, d_width=8, g_depth=3)


def test_uint8_fakes_are_the_float_fakes_quantised_to_256_levels() -> None:
    _, masks = make_scenes(range(4), 32)
    wire = {dt: GeneratorTrainer(TINY, TrainConfig(fake_dtype=dt)).generate("n", 1, masks, request_id=1)
            for dt in ("float32", "uint8")}
    assert wire["uint8"].dtype == np.uint8
    back = wire["uint8"].astype(np.float32) / 127.5 - 1
    assert np.abs(back - wire["float32"]).max() <= 0.5 / 127.5 + 1e-6
    assert len(np.unique(wire["uint8"])) > 32  # the whole range is used, not a cast that wraps to a few values


def test_a_node_scores_uint8_fakes_as_the_floats_they_stand_for() -> None:
    images, masks = make_scenes(range(4), 32)
    gen = GeneratorTrainer(TINY, TrainConfig(fake_dtype="float32"))
    fakes = gen.generate("n", 1, masks, request_id=1)
    quantised = np.round((np.clip(fakes, -1, 1) + 1) * 127.5).astype(np.uint8)
    grads = []
    for wire in (quantised.astype(np.float32) / 127.5 - 1, quantised):
        d = DiscriminatorTrainer(TINY, FeedbackConfig(warmup=0), seed=3)
        grads.append(d.score(masks, images, wire, "float32").grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value", [("mode", "round-robin"), ("weighting", "loudest"), ("fake_dtype", "int8")])
def test_train_config_refuses_values_it_does_not_know(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("command,option,value", [
    ("generator", "--fake-dtype", "int8"), ("generator", "--weighting", "loudest"),
    ("generator", "--mode", "round-robin"), ("generator", "--gan-mode", "wgan"),
    ("node", "--grad-dtype", "bfloat16"), ("node", "--name", "../x"), ("run", "--partition", "dirichlet"),
    ("experiment", "--partition", "x"), ("experiment", "--weighting", "loudest"),
])
def test_every_cli_choice_names_the_valid_values_when_given_another(command: str, option: str, value: str) -> None:
    args = [command, option, value] + (["--name", "n0"] if command == "node" and option != "--name" else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert value in res.output and "Invalid value" in res.output
