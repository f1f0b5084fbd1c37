"""The generator's speed settings: bf16 only where detected (or asked for), channels_last and bf16 keep G's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgan.cpu_features import cpu_flags, native_bf16, resolve_precision
from dgan.data.scenes import make_scenes
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig

MODEL = ModelConfig(image_size=32, g_width=8, d_width=8)


def test_cpu_flags_are_read_from_cpuinfo_and_a_missing_file_gives_none(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_flags(info) == ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f"]
    assert cpu_flags(tmp_path / "absent") == []


def test_auto_precision_is_bf16_only_on_native_bf16_cpus_or_cuda() -> None:
    assert resolve_precision("auto", "cpu", flags=["avx2", "avx512f"]) == "fp32"  # emulated: 20x slower
    assert resolve_precision("auto", "cpu", flags=["avx512_bf16"]) == "bf16"
    assert resolve_precision("auto", "cpu", flags=["amx_bf16"]) == "bf16"
    assert resolve_precision("auto", "cuda:0", flags=[]) == "bf16"
    assert resolve_precision("fp32", "cpu", flags=["amx_bf16"]) == "fp32"  # an explicit choice stands
    assert resolve_precision("bf16", "cpu", flags=[]) == "bf16"
    assert not native_bf16([]) and native_bf16(["avx512_bf16"])


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def _fakes_and_step(**settings: object) -> tuple[np.ndarray, GeneratorTrainer, list[np.ndarray]]:
    """Fakes, the trainer after one step, and the gradient that step took (before Adam scaled it)."""
    _, masks = make_scenes(range(2), MODEL.image_size)
    gen = GeneratorTrainer(MODEL, TrainConfig(seed=3, fake_dtype="float32", **settings))  # type: ignore[arg-type]
    fakes = gen.generate("n", 1, masks, request_id=1)
    grad = np.random.default_rng(0).standard_normal(fakes.shape).astype(np.float32)
    outcome, _, reason = gen.apply_feedback("n", 1, grad)
    assert outcome == Outcome.APPLIED, reason
    assert gen._acc is not None
    grads = [a.detach().clone().contiguous().numpy() for a in gen._acc]
    assert gen.update()
    return fakes, gen, grads


def test_channels_last_makes_the_same_fakes_and_steps() -> None:
    base, _, grads0 = _fakes_and_step()
    nhwc, _, grads1 = _fakes_and_step(channels_last=True)
    assert nhwc.dtype == np.float32 and nhwc.shape == base.shape
    np.testing.assert_allclose(nhwc, base, atol=1e-4)
    for a, b in zip(grads0, grads1, strict=True):  # not the weights: Adam's first step is +-lr for any tiny grad
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))


def test_bf16_autocast_fakes_are_float32_close_to_fp32_and_backpropagate() -> None:
    base, _, _ = _fakes_and_step()
    half, g1, _ = _fakes_and_step(precision="bf16")
    assert g1.precision == "bf16"
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half - base).max() < 0.1  # bf16 keeps 8 bits of mantissa: close, not equal
    assert np.abs(half - base).max() > 0  # the autocast really ran in bf16
    moved = [(b.detach() - a.detach()).abs().max().item() for a, b in
             zip(GeneratorTrainer(MODEL, TrainConfig(seed=3)).G.parameters(), g1.G.parameters(), strict=True)]
    assert max(moved) > 0  # the bf16 graph carried the node's gradient into an Adam step


def test_speed_bench_measures_bf16_exactly_where_the_cpu_has_it() -> None:
    from benchmarks.gen_speed import run_gen_speed_benchmark

    out = run_gen_speed_benchmark(quick=True, repeats=1)
    names = {r["variant"] for r in out["rows"]}
    assert {"fp32, 2 threads (default)", "fp32, 1 thread", "channels_last"} <= names
    assert ("bf16 autocast" in names) == native_bf16()
    assert ("bf16 autocast" in {s["variant"] for s in out["skipped"]}) != native_bf16()
    assert all(r["samples_per_s"] > 0 for r in out["rows"])
    assert out["rows"][0]["vs_default"] == 1.0


def test_a_bf16_node_sends_a_float32_gradient_that_points_where_the_fp32_one_does() -> None:
    from dgan.feedback import FeedbackConfig
    from dgan.training.discriminator import DiscriminatorTrainer

    images, masks = make_scenes(range(4), MODEL.image_size)
    fakes = np.random.default_rng(1).uniform(-1, 1, (4, 3, MODEL.image_size, MODEL.image_size)).astype(np.float32)
    grads = {}
    for precision in ("fp32", "bf16"):
        node = DiscriminatorTrainer(MODEL, FeedbackConfig("adversarial"), seed=5, precision=precision)
        scored = node.score(masks, images, fakes)
        assert scored.grad.dtype == np.float32 and np.isfinite(scored.grad).all()
        grads[precision] = scored.grad.ravel() / scored.grad_scale
    a, b = grads["fp32"], grads["bf16"]
    assert not np.array_equal(a, b)  # bf16 really ran
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.95


def test_an_unknown_node_precision_is_refused() -> None:
    from dgan.training.discriminator import DiscriminatorTrainer
    from nodes.discriminator_node import NodeConfig

    with pytest.raises(ValueError, match="precision"):
        DiscriminatorTrainer(MODEL, precision="half")
    with pytest.raises(ValueError, match="precision"):
        NodeConfig(name="n", precision="half")


def test_a_local_run_passes_its_precision_to_the_generator_and_every_node(tmp_path: Path) -> None:
    import torch

    from dgan.run import RunConfig, run_local

    cfg = RunConfig(nodes=2, steps=6, out=tmp_path / "run", scenes=8, image_size=32, g_width=8, d_width=8,
                    batch_size=2, synthesize=False, checkpoint_every=0, sample_every=0, timeout=240, precision="bf16",
                    feedback="adversarial")
    summary = run_local(cfg)
    assert summary["steps"] == 6
    assert all(node["feedbacks"] > 0 for node in summary["nodes"].values())  # a node refusing the flag sends none
    state = torch.load(cfg.out / "checkpoints" / "latest.pt", weights_only=False)
    assert state["train"]["precision"] == "bf16"
