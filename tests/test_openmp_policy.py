"""A local run whose threads outnumber the cores starts its processes with OpenMP's waiting threads asleep, not
spinning (dgan.openmp_policy); a run with cores to spare, the user's own settings and the opt-out are left as
they are."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import dgan.run as run_module
from dgan.openmp_policy import cgroup_cpu_limit, children_env, usable_cpus
from dgan.run import RunConfig, run_local

_OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DGAN_OMP_PASSIVE")


def test_more_threads_than_cores_makes_the_children_wait_passively() -> None:
    env, why = children_env({}, threads=7, cpus=2)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and why == "OMP_WAIT_POLICY=PASSIVE (7 threads on 2 cores)"
    assert children_env({}, threads=7, cpus=8) == ({}, "OpenMP as it comes (7 threads on 8 cores)")
    assert children_env({}, threads=2, cpus=2)[0] == {}  # as many threads as cores: nothing waits for a core


@pytest.mark.parametrize("environ, said", [
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "OpenMP left to the user's OMP_WAIT_POLICY=ACTIVE"),
    ({"GOMP_SPINCOUNT": "1000"}, "OpenMP left to the user's GOMP_SPINCOUNT=1000"),
    ({"DGAN_OMP_PASSIVE": "0"}, "OpenMP as it comes (DGAN_OMP_PASSIVE=0)"),
    ({"DGAN_OMP_PASSIVE": "off", "OMP_WAIT_POLICY": "PASSIVE"}, "OpenMP as it comes (DGAN_OMP_PASSIVE=off)"),
])
def test_the_users_own_openmp_settings_and_the_opt_out_are_kept(environ: dict[str, str], said: str) -> None:
    assert children_env(environ, threads=7, cpus=2) == ({}, said)


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "200000 100000\n"}, 2.0),                     # cgroup v2: docker --cpus=2
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),                       # no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
    ({}, None),
])
def test_a_cgroup_cpu_quota_is_read_in_cores(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota_rounded_up(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert usable_cpus(tmp_path) == mask  # no quota files: the mask
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core still runs a process
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 8) * 100000} 100000\n")  # a quota above the mask does not add
    assert usable_cpus(tmp_path) == mask


def _spincounts(log_dir: Path) -> dict[str, str]:
    """Each process's GOMP_SPINCOUNT as libgomp printed it when torch loaded it (OMP_DISPLAY_ENV=VERBOSE)."""
    found = {}
    for name in ("generator", "node0", "node1"):
        text = (log_dir / f"{name}.log").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if "GOMP_SPINCOUNT" in ln]
        found[name] = lines[0].split("=")[1].strip().strip("'") if lines else "not printed"
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp: PyTorch's OpenMP on Linux")
def test_a_crowded_local_runs_processes_wait_passively_and_a_roomy_ones_as_libgomp_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable must reach libgomp in each child, so this reads what libgomp itself printed at load."""
    monkeypatch.setenv("OMP_DISPLAY_ENV", "VERBOSE")
    for key in _OURS:
        monkeypatch.delenv(key, raising=False)
    for cpus, expected in ((2, "0"), (64, "300000")):  # 2 nodes + a generator on 2 threads + the broker: 5 threads
        monkeypatch.setattr(run_module, "usable_cpus", lambda cpus=cpus: cpus)
        out = tmp_path / f"cpus{cpus}"
        run_local(RunConfig(nodes=2, steps=4, out=out, scenes=8, image_size=32, g_width=8, d_width=8, batch_size=4,
                            synthesize=False, checkpoint_every=0, sample_every=0, generator_threads=2, timeout=300))
        assert _spincounts(out / "logs") == {"generator": expected, "node0": expected, "node1": expected}
    assert all(k not in os.environ for k in _OURS)  # the run set it for its children only


def test_the_openmp_benchmark_measures_both_policies_and_writes_its_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.openmp as bench

    tiny = {"size": 32, "width": 8, "run_steps": 8, "cycles": 2, "gan_steps": 2, "seg_steps": 2}
    monkeypatch.setattr(bench, "_sizes", lambda quick: tiny)
    out = tmp_path / "openmp.json"
    bench.run_openmp_benchmark(quick=True, json_out=out, repeats=1)
    result = json.loads(out.read_text())
    assert [r["policy"] for r in result["run"]] == list(bench.POLICIES)
    assert all(r["applied_samples_per_s"] > 0 and r["cpu_s_per_sample"] > 0 for r in result["run"])
    assert [r["phase"] for r in result["alone"]] == list(bench.PHASES)
    assert all(r[p] > 0 for r in result["alone"] for p in bench.POLICIES)
    assert result["alone_policy_seen"] == {bench.POLICIES[0]: ["unset"], bench.POLICIES[1]: ["PASSIVE"]}


def test_dgan_bench_openmp_is_a_command_with_quick_and_json() -> None:
    from typer.testing import CliRunner

    from dgan.cli import app

    result = CliRunner().invoke(app, ["bench", "openmp", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quick" in result.output and "--json" in result.output
