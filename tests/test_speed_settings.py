"""The generator's speed settings: bf16 only where detected (or asked for), channels_last and bf16 keep G's output."""

from __future__ import annotations

import json
import os
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


def test_auto_precision_is_bf16_only_on_native_bf16_cpus_or_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import dgan.cpu_features as cf

    assert resolve_precision("auto", "cpu", flags=["avx2", "avx512f"]) == "fp32"  # emulated: 20x slower
    assert resolve_precision("auto", "cpu", flags=["avx512_bf16"]) == "bf16"
    assert resolve_precision("auto", "cpu", flags=["amx_bf16"]) == "bf16"
    monkeypatch.setattr(cf, "cuda_native_bf16", lambda: True)  # Ampere and later
    assert resolve_precision("auto", "cuda:0", flags=[]) == "bf16"
    monkeypatch.setattr(cf, "cuda_native_bf16", lambda: False)  # a T4 or V100 emulates bf16
    assert resolve_precision("auto", "cuda:0", flags=["avx512_bf16"]) == "fp32"
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


def test_auto_precision_is_recorded_as_what_it_resolved_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint says what ran, so a replay on a machine of the other kind computes the same."""
    import dgan.cpu_features as cf

    monkeypatch.setattr(cf, "cpu_flags", lambda: ["avx512_bf16"])
    gen = GeneratorTrainer(MODEL, TrainConfig(precision="auto"))
    assert gen.precision == "bf16" and gen.state()["train"]["precision"] == "bf16"
    monkeypatch.setattr(cf, "cpu_flags", lambda: [])
    assert GeneratorTrainer.from_state(gen.state()).precision == "bf16"  # not re-resolved to fp32 here
    assert GeneratorTrainer(MODEL, TrainConfig(precision="auto")).state()["train"]["precision"] == "fp32"


def test_checkpoints_without_the_speed_settings_or_with_unknown_ones_still_load() -> None:
    gen = GeneratorTrainer(MODEL, TrainConfig(seed=2))
    state = gen.state()
    for key in ("precision", "channels_last", "compile"):  # a checkpoint from before these settings
        del state["train"][key]
    state["train"]["a_later_setting"] = 1  # and one from a newer dgan
    back = GeneratorTrainer.from_state(state)
    assert back.precision == "fp32" and not back.cfg.channels_last and not back.cfg.compile
    for a, b in zip(gen.G.parameters(), back.G.parameters(), strict=True):
        assert a.detach().equal(b.detach())


def test_a_compile_that_fails_falls_back_to_the_eager_forward(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import torch

    def broken(*_a: object, **_k: object) -> object:
        def run(*_args: object) -> object:
            raise RuntimeError("no C++ compiler")
        return run

    base, _, _ = _fakes_and_step()
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="dgan.generator"):
        fakes, gen, _ = _fakes_and_step(compile=True)
    np.testing.assert_allclose(fakes, base, atol=1e-6)
    assert gen._forward == gen._eager_forward
    assert "torch.compile failed" in caplog.text


def test_channels_last_makes_the_same_fakes_and_steps() -> None:
    import torch

    base, _, grads0 = _fakes_and_step()
    nhwc, gen, grads1 = _fakes_and_step(channels_last=True)
    conv = gen.G.down[1][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert gen._params_now()[2].is_contiguous(memory_format=torch.channels_last)  # the snapshot G runs from
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


def test_speed_bench_skips_bf16_on_an_emulating_cpu_and_measures_it_when_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.gen_speed as bench

    monkeypatch.setattr(bench, "native_bf16", lambda: False)
    out = bench.run_gen_speed_benchmark(quick=True, repeats=1)
    names = {r["variant"] for r in out["rows"]}
    assert names == {"fp32, 2 threads (default)", "fp32, 1 thread", "channels_last"}
    assert {s["variant"] for s in out["skipped"]} == {"bf16 autocast", "bf16 + channels_last", "torch.compile"}
    assert all(r["samples_per_s"] > 0 for r in out["rows"]) and out["rows"][0]["vs_default"] == 1.0
    forced = bench.run_gen_speed_benchmark(quick=True, repeats=1, force_bf16=True)
    bf16 = {r["variant"]: r for r in forced["rows"] if r["precision"] == "bf16"}
    assert {v: r["channels_last"] for v, r in bf16.items()} == {"bf16 autocast": False, "bf16 + channels_last": True}
    assert all(r["samples_per_s"] > 0 for r in bf16.values())


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
    # a node refusing the flag would exit before its WELCOME; one node may serve all 6 steps before the other joins
    assert sum(node["feedbacks"] for node in summary["nodes"].values()) >= 6
    state = torch.load(cfg.out / "checkpoints" / "latest.pt", weights_only=False)
    assert state["train"]["precision"] == "bf16"
    # each node says what its D runs in once welcomed ("" for a node the run ended before it could join)
    seen = [json.loads((cfg.out / "nodes" / f"node{i}.json").read_text())["precision"] for i in range(2)]
    assert "bf16" in seen and set(seen) <= {"bf16", ""}, seen


def test_a_compiled_generator_makes_the_eager_fakes_and_gradients_without_dropout() -> None:
    """torch.compile for real (about 20-35 s here). Dropout is off: compiled dropout draws from inductor's own RNG,
    so with it on the noise, not the network, differs."""
    import shutil

    model = ModelConfig(image_size=32, g_width=8, d_width=8, dropout=0.0)
    _, masks = make_scenes(range(2), model.image_size)
    out = {}
    for compiled in (False, True):
        gen = GeneratorTrainer(model, TrainConfig(seed=3, fake_dtype="float32", compile=compiled))
        fakes = gen.generate("n", 1, masks, request_id=1)
        grad = np.random.default_rng(0).standard_normal(fakes.shape).astype(np.float32)
        assert gen.apply_feedback("n", 1, grad)[0] == Outcome.APPLIED
        assert gen._acc is not None
        out[compiled] = (fakes, [a.detach().clone() for a in gen._acc], gen._forward == gen._compiled_forward)
    if shutil.which("c++") or shutil.which("g++"):  # inductor needs a C++ compiler; without one G runs eagerly
        assert out[True][2], "with a C++ compiler here, the compiled forward must have run"
    np.testing.assert_allclose(out[True][0], out[False][0], atol=1e-5)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_a_device_that_cannot_run_here_is_named_in_one_line_and_cpu_always_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dgan.cpu_features import device_problem

    assert device_problem("cpu") is None
    assert "cpu, cuda or cuda:N" in (device_problem("gpu") or "")
    assert "cpu, cuda or cuda:N" in (device_problem("cuda:x") or "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no CUDA GPU here; use --device cpu" in (device_problem("cuda") or "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda") is None and device_problem("cuda:1") is None
    assert "2 CUDA device(s)" in (device_problem("cuda:2") or "")


def test_every_command_refuses_a_gpu_it_cannot_have_before_it_starts(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from typer.testing import CliRunner

    from dgan.cli import app
    from dgan.experiment import ExperimentConfig, ExperimentSetupError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["experiment", "--out", str(tmp_path / "e"), "--quick"], ["generator", "--out", str(tmp_path / "g")],
                 ["node", "--name", "n0"], ["run", "--out", str(tmp_path / "r")],
                 ["segment", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt")]):
        res = CliRunner().invoke(app, [*argv, "--device", "cuda"], env={"COLUMNS": "240"})  # no wrapped lines
        assert res.exit_code == 2 and "sees no CUDA GPU here; use --device cpu" in res.output, (argv, res.output)
    assert not any((tmp_path / name).exists() for name in ("e", "g", "r", "m.pt"))
    with pytest.raises(ExperimentSetupError, match="cpu, cuda or cuda:N"):
        ExperimentConfig(out=tmp_path, device="tpu")


def test_the_experiment_hands_its_device_to_the_gans_the_dgan_processes_and_the_segmenters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import dgan.experiment as ex
    import dgan.experiment_central as central
    from dgan.data.loaders import PairSet
    from dgan.experiment_splits import Splits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = ex.ExperimentConfig(out=tmp_path, device="cuda", nodes=1)
    seen: dict[str, str] = {}

    class Stop(Exception):
        pass

    def record(name: str, device: str) -> None:
        seen[name] = device
        raise Stop

    class CentralG:
        def __init__(self, model: object, train: TrainConfig) -> None:
            seen["central G"] = train.device

    monkeypatch.setattr(ex, "run_local", lambda rc, watch=None: record("dgan processes", rc.device))
    monkeypatch.setattr(central, "GeneratorTrainer", CentralG)
    monkeypatch.setattr(central, "DiscriminatorTrainer", lambda model, recipe, seed, device, **k: record("central D",
                                                                                                         device))
    monkeypatch.setattr(ex, "train_segmenter", lambda *a, **k: record("segmenter", a[2].device))
    monkeypatch.setattr(ex, "train_local", lambda syn, own, seg, **k: record("department model", seg.device))
    ims, masks = make_scenes(range(2), 32)
    pairs = PairSet(ims, masks, ["a", "b"], {}, ("background", "building"))
    splits = Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0, 1]], description={})
    for call in (lambda: ex.dgan_run(cfg, splits, "async", 0, "adversarial"),
                 lambda: ex.central_gan_trained(cfg, splits, 0, "adversarial", tmp_path),
                 lambda: ex.evaluate_training_set(cfg, pairs, splits, 0),
                 lambda: ex.evaluate_training_set(cfg, pairs, splits, 0, own=pairs)):
        with pytest.raises(Stop):
            call()
    assert seen == dict.fromkeys(("dgan processes", "central G", "central D", "segmenter", "department model"),
                                 "cuda")
    cpu_key = ex.cache_key(ex.ExperimentConfig(out=tmp_path, nodes=1), splits, "real_all")
    assert ex.cache_key(cfg, splits, "real_all") != cpu_key  # a GPU's results are cached apart


def test_a_gpu_checkpoint_loads_on_the_cpu_where_there_is_no_gpu_and_on_a_device_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = GeneratorTrainer(MODEL, TrainConfig(seed=1)).state()
    state["train"]["device"] = "cuda"  # as `dgan experiment --device cuda` writes it
    gen = GeneratorTrainer.from_state(state)
    assert gen.device.type == "cpu" and gen.cfg.device == "cpu"
    _, masks = make_scenes(range(2), MODEL.image_size)
    assert gen.synthesize(masks, seed=0).shape == (2, MODEL.image_size, MODEL.image_size, 3)
    assert GeneratorTrainer.from_state(state, device="cpu").device.type == "cpu"


def test_a_segmenter_trained_on_a_gpu_loads_as_a_cpu_model(tmp_path: Path) -> None:
    from dgan.segment import SegConfig, define_segmenter, load_model, save_model

    cfg = SegConfig(width=4, depth=2, device="cuda")
    save_model(define_segmenter(cfg), cfg, tmp_path / "m.pt")
    model, loaded = load_model(tmp_path / "m.pt")
    assert loaded.device == "cpu" and next(model.parameters()).device.type == "cpu"


def test_cuda_runs_ask_for_reproducible_kernels_and_fork_the_gpu_random_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dgan.cpu_features import deterministic_cuda, rng_devices

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        deterministic_cuda()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])
    assert rng_devices(torch.device("cpu")) == []
    assert rng_devices(torch.device("cuda:1")) == [1]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert rng_devices(torch.device("cuda")) == [0]
