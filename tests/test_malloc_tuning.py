"""dgan's glibc malloc thresholds: freed tensors are reused instead of refaulted, every command applies them, and the
user's own allocator settings win."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgan import malloc_tuning
from dgan.cli import app

GLIBC = platform.libc_ver()[0] == "glibc"

# Page faults of two forward passes of a small conv net whose activations are 64 MiB each (16,384 pages of 4 KiB),
# after three passes that warmed it up.
_REFAULTS = """
import resource, sys
from dgan.malloc_tuning import tune_malloc
state = tune_malloc(environ={}) if sys.argv[1] == "tuned" else "as it comes"
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 3, 3, padding=1))
x = torch.randn(16, 3, 128, 128)
with torch.no_grad():
    for _ in range(3):
        net(x)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        net(x)
print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _refaults(setting: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _REFAULTS, setting], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    return " ".join(out[:-1]), int(out[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_tuned_malloc_reuses_freed_activations_instead_of_faulting_them_in_again() -> None:
    state, tuned = _refaults("tuned")
    assert state == "tuned"
    _, plain = _refaults("plain")
    assert plain > 30_000  # glibc maps blocks this large afresh each pass: their pages fault in again (131,080 here)
    assert tuned < 1_000  # 0 here


@pytest.mark.parametrize("environ, why", [
    ({"DGAN_MALLOC_TUNING": "0"}, "off"),
    ({"DGAN_MALLOC_TUNING": "off"}, "off"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "user"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "user"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "preloaded"),
])
def test_the_users_own_malloc_settings_and_the_opt_out_are_left_alone(environ: dict[str, str], why: str) -> None:
    assert why in (malloc_tuning.why_not(environ) or "")
    assert why in malloc_tuning.tune_malloc(environ=environ)


def test_unrelated_environment_does_not_stop_the_tuning() -> None:
    assert malloc_tuning.why_not({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=0", "DGAN_MALLOC_TUNING": "1",
                                  "LD_PRELOAD": "libfoo.so"}) is None


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
@pytest.mark.parametrize("opt_out, expected", [(None, "tuned"), ("0", "off (DGAN_MALLOC_TUNING=0)")])
def test_every_dgan_command_applies_the_tuning_before_it_runs(monkeypatch: pytest.MonkeyPatch, opt_out: str | None,
                                                              expected: str) -> None:
    monkeypatch.setattr(malloc_tuning, "state", "not applied")
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    if opt_out is None:
        monkeypatch.delenv("DGAN_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("DGAN_MALLOC_TUNING", opt_out)
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert malloc_tuning.state == expected


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_malloc_benchmark_measures_each_setting_in_its_own_process(tmp_path: Path) -> None:
    from benchmarks.malloc import PHASES, SETTINGS, run_malloc_benchmark

    out = tmp_path / "malloc.json"
    run_malloc_benchmark(quick=True, json_out=out, repeats=1)
    result = json.loads(out.read_text())
    assert result["states"] == {"glibc defaults": ["glibc defaults"], "tuned": ["tuned"]}
    rows = {(r["setting"], r["phase"]): r for r in result["rows"]}
    assert set(rows) == {(s, p) for s in SETTINGS for p in PHASES}
    assert all(r["per_s"] > 0 for r in rows.values())
    # synthesis in batches of 32 is where glibc refaults most: about 41,000 faults against 2,000 tuned at 64 px
    assert rows["tuned", "synthesis"]["page_faults"] < rows["glibc defaults", "synthesis"]["page_faults"] / 4


def test_update_rule_pool_workers_end_with_the_bench_and_tune_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.update_rule as bench

    calls: list[object] = []
    monkeypatch.setattr(bench, "die_with_parent", lambda parent: calls.append(parent))
    monkeypatch.setattr(bench, "tune_malloc", lambda: calls.append("tuned"))
    bench._worker_start(4242)
    assert calls == [4242, "tuned"]
