"""`dgan experiment --precision/--channels-last`: both GANs run in them, and results and caches keep them apart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import dgan.cpu_features as cpu
import dgan.experiment as ex
import dgan.experiment_central as central
from dgan.data.loaders import PairSet
from dgan.data.scenes import make_scenes
from dgan.experiment_splits import Splits, gan_training_key
from dgan.experiment_tables import markdown
from dgan.finished_runs import launch_fingerprint
from dgan.run import RunConfig, _run_local


class Stop(Exception):
    pass


def _splits() -> Splits:
    ims, masks = make_scenes(range(2), 32)
    pairs = PairSet(ims, masks, ["a", "b"], {}, ("background", "building"))
    return Splits(train=pairs, val=pairs, test=pairs, node_parts=[[0, 1]], description={})


def _native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(cpu, "native_bf16", lambda flags=None: native)


def test_both_gans_run_in_the_experiments_precision_and_layout(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _native_bf16(monkeypatch, True)  # --precision auto resolves to bf16 on such a CPU
    cfg = ex.ExperimentConfig(out=tmp_path, nodes=1, size=32, precision="auto", channels_last=True)
    seen: dict[str, Any] = {}

    def record(name: str, value: Any) -> None:
        seen[name] = value
        raise Stop

    class CentralG:
        def __init__(self, model: object, train: Any) -> None:
            seen["central G"] = (train.precision, train.channels_last)

    monkeypatch.setattr(ex, "run_local",
                        lambda rc, watch=None: record("dgan processes", (rc.precision, rc.channels_last)))
    monkeypatch.setattr(central, "GeneratorTrainer", CentralG)
    monkeypatch.setattr(central, "DiscriminatorTrainer",
                        lambda model, recipe, seed, device, precision: record("central D", precision))
    for call in (lambda: ex.dgan_run(cfg, _splits(), "async", 0, "adversarial"),
                 lambda: ex.central_gan_trained(cfg, _splits(), 0, "adversarial", tmp_path)):
        with pytest.raises(Stop):
            call()
    assert seen == {"dgan processes": ("bf16", True), "central G": ("bf16", True), "central D": "bf16"}


def test_auto_is_fp32_on_a_cpu_that_emulates_bf16_and_then_shares_fp32s_caches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _native_bf16(monkeypatch, False)
    base = ex.ExperimentConfig(out=tmp_path, nodes=1, size=32)
    auto = replace(base, precision="auto")
    assert auto.gan_precision == "fp32"
    splits = _splits()
    for method in ("real_all", "central_gan"):
        assert ex.cache_key(auto, splits, method, "adversarial") == ex.cache_key(base, splits, method, "adversarial")
    assert gan_training_key(auto, splits, "adversarial") == gan_training_key(base, splits, "adversarial")
    assert launch_fingerprint(ex.dgan_launch(auto, splits, "async", 0, "adversarial")) == launch_fingerprint(
        ex.dgan_launch(base, splits, "async", 0, "adversarial"))


def test_bf16_and_channels_last_get_their_own_gan_caches_and_fingerprints_but_not_the_real_methods(
        tmp_path: Path) -> None:
    base = ex.ExperimentConfig(out=tmp_path, nodes=1, size=32, d_steps=1)  # one D step: the folders runs had then
    splits = _splits()
    others = [replace(base, precision="bf16"), replace(base, channels_last=True)]
    for other in others:
        assert ex.cache_key(other, splits, "central_gan", "adversarial") != ex.cache_key(
            base, splits, "central_gan", "adversarial")
        assert gan_training_key(other, splits, "adversarial") != gan_training_key(base, splits, "adversarial")
        assert launch_fingerprint(ex.dgan_launch(other, splits, "async", 0, "adversarial")) != launch_fingerprint(
            ex.dgan_launch(base, splits, "async", 0, "adversarial"))
        for real in ("real_all", "real_partial"):  # the segmenters stay fp32: the yardsticks are shared
            assert ex.cache_key(other, splits, real) == ex.cache_key(base, splits, real)
    # runs that finished before channels_last existed keep their fingerprints and folders while it is off
    plain = ex.dgan_launch(base, splits, "async", 0, "adversarial")
    assert "channels_last" not in launch_fingerprint(plain) and plain.out.name == "dgan_async_adversarial_seed0"
    # and trainings in other arithmetic go to their own folders: switching back finds the first one finished
    folders = {ex.dgan_launch(o, splits, "async", 0, "adversarial").out.name for o in others}
    assert folders == {"dgan_async_adversarial_bf16_seed0", "dgan_async_adversarial_cl_seed0"}


def test_an_unknown_precision_is_refused_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(ex.ExperimentSetupError, match="precision"):
        ex.ExperimentConfig(out=tmp_path, precision="fp16")


def test_dgan_run_hands_channels_last_to_the_generator_only_when_asked(tmp_path: Path) -> None:
    started: dict[str, list[str]] = {}

    class Group:
        def start(self, name: str, args: list[str], *rest: Any) -> None:
            started[name] = args
            if name == "node0":
                raise Stop

        def stop_all(self) -> None:
            pass

    for channels_last in (False, True):
        with pytest.raises(Stop):
            _run_local(RunConfig(nodes=1, out=tmp_path / str(channels_last), channels_last=channels_last,
                                 precision="bf16"), None, Group())  # type: ignore[arg-type]
        gen, node = started["generator"], started["node0"]
        assert ("--channels-last" in gen) is channels_last and "--channels-last" not in node
        assert gen[gen.index("--precision") + 1] == node[node.index("--precision") + 1] == "bf16"


def test_the_results_say_what_the_gans_ran_in_only_where_not_the_default() -> None:
    def results(**kw: Any) -> dict[str, Any]:
        return {"dataset": "d", "partition": "group", "resolution": 32, "methods": {}, "claims": {}, **kw}

    assert "GANs in" not in markdown(results(gan_precision="fp32", config={"precision": "fp32"}))
    assert "GANs in bf16 (--precision auto), G in channels_last" in markdown(
        results(gan_precision="bf16", config={"precision": "auto", "channels_last": True}))


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_about_and_auto_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _native_bf16(monkeypatch, False)
    assert "0.045x" in (cpu.slow_bf16_warning("bf16") or "")
    assert cpu.slow_bf16_warning("auto") is None and cpu.slow_bf16_warning("bf16", "cuda") is None
    _native_bf16(monkeypatch, True)
    assert cpu.slow_bf16_warning("bf16") is None
