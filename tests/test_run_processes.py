"""Broker, generator and nodes as real processes over tcp://127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dgan import replay as R
from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.data.scenes import make_scenes
from dgan.networks import ModelConfig, images_to_tensor, masks_to_input
from dgan.rowstream import read_rows
from dgan.run import HELDOUT_SEED_BASE, ProcessGroup, RunConfig, run_local, write_shards
from dgan.training.generator import GeneratorTrainer, TrainConfig
from tests.conftest import children_of, running, wait_until

SMALL = ["--image-size", "64", "--g-width", "16", "--d-width", "16"]


def heldout_contrast(checkpoint: Path) -> tuple[float, float]:
    """Building-vs-ground colour contrast of the fakes and of the real images, on held-out scenes.

    The default feedback (segmentation) has no pixel loss, so learning shows as fakes whose buildings
    stand out from the ground as the real ones do, not as a falling L1 distance.
    """
    state = torch.load(checkpoint, weights_only=True)
    trainer = GeneratorTrainer(ModelConfig.from_dict(state["model"]), TrainConfig())
    trainer.G.load_state_dict(state["G"])
    images, masks = make_scenes(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 16), 64)
    with torch.no_grad():
        torch.manual_seed(0)
        fake = trainer.G(masks_to_input(torch.from_numpy(masks), 2))
    inside = torch.from_numpy(masks > 0).unsqueeze(1).float()

    def contrast(x: torch.Tensor) -> float:
        fg = (x * inside).sum((0, 2, 3)) / inside.sum()
        bg = (x * (1 - inside)).sum((0, 2, 3)) / (1 - inside).sum()
        return float((fg - bg).abs().mean())

    return contrast(fake), contrast(images_to_tensor(torch.from_numpy(images)))


def test_run_with_three_node_processes_trains_and_every_node_contributes(tmp_path: Path) -> None:
    # segmentation feedback: with its warmed-up segmenter, alignment shows within 40 steps (adversarial-only is slower)
    cfg = RunConfig(nodes=3, steps=40, out=tmp_path / "run", scenes=60, image_size=64, g_width=16, d_width=16,
                    checkpoint_every=20, sample_every=20, timeout=240, feedback="segmentation")
    summary = run_local(cfg)
    assert summary["steps"] == 40
    assert set(summary["nodes"]) == {"node0", "node1", "node2"}
    for name, node in summary["nodes"].items():
        assert node["feedbacks"] > 0, name
        assert node["masks"] == 20, name
    assert summary["synthetic_images"] == 60
    assert len(list((cfg.out / "synthetic" / "images").glob("*.png"))) == 60
    assert (cfg.out / "samples" / "step_000040.png").exists()
    (start, real), (end, _) = (heldout_contrast(cfg.out / "checkpoints" / f) for f in ("ckpt_000000.pt", "latest.pt"))
    # measured: 0.09 -> 0.52 (real 0.28) with the segmenter warmed up, 0.09 -> 0.18 without
    assert end - start > 0.5 * (real - start), (start, end, real)


def test_kill_9_of_a_node_its_restart_and_a_late_joiner_and_the_log_still_rebuilds_g_bitwise(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = RunConfig(nodes=3, out=out, scenes=60, image_size=64)
    shards = write_shards(cfg)
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    log = out / "broker.dgl"

    def node(i: int) -> list[str]:  # joining and leaving is what this test is about: no segmenter warm-up
        return node_args(ports, f"node{i}", shards[i], image_size=64, batch_size=4, heartbeat=1.0,
                         extra=["--d-warmup", "0"])

    try:
        group.start("broker", broker_args(ports, record=log, heartbeat=1.0), 1)
        gen = group.start("generator", generator_args(ports, out, 1_000_000, checkpoint_every=10, heartbeat=1.0,
                                                      synthesize=False, extra=SMALL), 1)
        victim = group.start("node0", node(0), 1)
        group.start("node1", node(1), 1)
        wait_until((out / "checkpoints" / "ckpt_000010.pt").exists, 120, "progress before the kill")
        os.kill(victim.pid, signal.SIGKILL)
        late = group.start("node2", node(2), 1)
        wait_until(lambda: "node node0 left" in (out / "logs" / "generator.log").read_text(), 30, "the expiry")
        group.start("node0-again", node(0), 1)  # the same name, a new process: new message-id epoch

        def rows() -> list[list]:
            return list(read_rows(out / "feedback.jsonl"))

        def both_back() -> bool:  # rows are flushed every 64: a few batches after both joined
            got = rows()
            first_late = next((i for i, r in enumerate(got) if r[1] == "node2"), None)
            return first_late is not None and any(r[1] == "node0" for r in got[first_late:])

        wait_until(both_back, 180, "the late joiner and the restarted node0 to contribute")
        gen.send_signal(signal.SIGTERM)  # the generator ends the run and tells the nodes
        assert gen.wait(120) == 0
        assert late.wait(30) == 0
    finally:
        group.stop_all()
    summary = json.loads((out / "run.json").read_text())
    assert summary["nodes"]["node2"]["feedbacks"] > 0 and summary["nodes"]["node0"]["alive_at_end"] is True
    assert "node node0 said hello again" in (out / "logs" / "generator.log").read_text()
    assert np.isfinite(summary["samples_per_s"])
    rebuilt = tmp_path / "rebuilt.pt"
    final_step = summary["steps"]
    assert R.rebuild_generator(log, out / "checkpoints" / "ckpt_000000.pt", rebuilt, until_step=final_step) == (
        final_step)
    final, mine = (torch.load(p, weights_only=True)["G"] for p in (out / "checkpoints" / "latest.pt", rebuilt))
    assert all(torch.equal(t, mine[k]) for k, t in final.items())


def test_generator_kill_9_and_resume_continues_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = RunConfig(nodes=2, out=out, scenes=20, image_size=64)
    shards = write_shards(cfg)
    ports = Ports.free()
    group = ProcessGroup(out / "logs")
    gen_args = generator_args(ports, out, 40, checkpoint_every=10, heartbeat=0.5, extra=SMALL)
    try:
        group.start("broker", broker_args(ports, heartbeat=0.5), 1)
        first = group.start("generator", gen_args, 1)
        for i in range(2):
            group.start(f"node{i}", node_args(ports, f"node{i}", shards[i], image_size=64, batch_size=4,
                                              heartbeat=0.5), 1)
        wait_until((out / "checkpoints" / "ckpt_000010.pt").exists, 120, "a checkpoint before the kill")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        saved = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"]
        second = group.start("generator2", [*gen_args, "--resume"], 1)
        assert second.wait(180) == 0
    finally:
        group.stop_all()
    log = (out / "logs" / "generator2.log").read_text()
    assert f"at step {saved}" in log
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] == 40
    assert all(n["feedbacks"] > 0 for n in summary["nodes"].values())  # both nodes came back to the new generator


@contextlib.contextmanager
def local_runner(tmp_path: Path, synthesize: bool = False) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                              dict[int, str]]]:
    """A `run_local` with 2 nodes in a process of its own, and its 4 children (pid: start time) once the run is
    under way: the generator has started its run and welcomed both nodes, so every handler is in place.

    The runner has a session of its own: whatever happens, killing its group afterwards leaves nothing behind."""
    script = ("from pathlib import Path; from dgan.run import RunConfig, run_local; "
              f"run_local(RunConfig(nodes=2, steps=100_000, out=Path({str(tmp_path / 'run')!r}), scenes=20, "
              f"image_size=64, g_width=16, d_width=16, synthesize={synthesize}))")
    runner = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        logs = tmp_path / "run" / "logs"

        def under_way() -> bool:
            text = {n: (logs / f"{n}.log").read_text(errors="replace") if (logs / f"{n}.log").exists() else ""
                    for n in ("generator", "node0", "node1")}
            return "generator: run" in text["generator"] and all("welcomed" in text[n] for n in ("node0", "node1"))

        wait_until(under_way, 120, "the generator's run and both nodes welcomed")
        assert len(children_of(runner.pid)) == 4, children_of(runner.pid)
        yield runner, children_of(runner.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()


def test_sigterm_to_a_local_run_stops_its_broker_generator_and_nodes(tmp_path: Path) -> None:
    with local_runner(tmp_path) as (runner, children):
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(60) == 128 + signal.SIGTERM  # unwound (the default action would give -15)
        alive = {pid for pid, started in children.items() if running(pid, started)}
        assert not alive, f"orphans left running: {alive}"


def test_kill_9_of_a_local_run_still_ends_its_broker_generator_and_nodes(tmp_path: Path) -> None:
    with local_runner(tmp_path, synthesize=True) as (runner, children):
        runner.kill()  # no handler runs: each child's own PR_SET_PDEATHSIG has to end it
        assert runner.wait(60) == -signal.SIGKILL
        wait_until(lambda: not any(running(pid, started) for pid, started in children.items()), 60,
                   "every child of the killed runner to end")
    log = (tmp_path / "run" / "logs" / "generator.log").read_text()
    assert "SIGTERM: finishing the run" in log and "the parent is gone: no synthetic set" in log  # its own signal
    assert not (tmp_path / "run" / "synthetic").exists()  # an orphan does not synthesise for minutes


@pytest.mark.parametrize(("value", "lives"), [("parent", True), ("token", True), ("reused", False), ("0", False),
                                               ("junk", True)])
def test_a_child_told_its_parent_dies_with_it_and_one_whose_parent_is_gone_ends_at_once(value: str,
                                                                                       lives: bool) -> None:
    from dgan.stop_signals import DIE_WITH_PARENT, starter_token

    pid, started, ns = starter_token().split(":", 2)  # "reused": this pid, but not the process that started then
    env = {**os.environ, DIE_WITH_PARENT: {"parent": pid, "token": starter_token(),
                                           "reused": f"{pid}:{int(started) + 1}:{ns}"}.get(value, value)}
    script = ("import os\nfrom dgan.stop_signals import die_with_parent_from_env, parent_gone\n"
              f"die_with_parent_from_env()\nprint('alive', {DIE_WITH_PARENT!r} in os.environ, parent_gone())")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    # pid 0 is never a child's parent: as if the parent had died before the child asked for its signal; a child
    # not told to watch its parent ("junk") is never orphaned in parent_gone's sense, whoever its parent becomes
    assert (done.returncode, done.stdout) == ((0, "alive False False\n") if lives else (1, "")), done.stderr
    assert ("has ended: exiting" in done.stderr) != lives  # an early exit says why



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_starter_and_its_children_read_proc_when_a_command_name_is_not_utf8() -> None:
    # the renamed process makes a starter token from its own /proc entry, and its child walks up past it
    script = ("import ctypes, subprocess, sys\n"
              "ctypes.CDLL(None).prctl(15, b'dgan\\xe9\\xff)', 0, 0, 0)  # PR_SET_NAME; a ')' in it as well\n"
              "from dgan.stop_signals import starter_token\n"
              "name = open('/proc/self/stat', 'rb').read().split(b' (', 1)[1][:7]\n"
              "print(name, starter_token().split(':')[1].isdigit())\n"
              "child = 'from dgan.stop_signals import _ancestors; import os; c, full = _ancestors(); '\\\n"
              "        'print(os.getppid() in c and full)'\n"
              "sys.stdout.flush(); subprocess.run([sys.executable, '-c', child], check=True)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "b'dgan\\xe9\\xff)' True\nTrue\n"), done.stderr


SLEEPER = """import os, signal, sys, time
from dgan.stop_signals import die_with_parent_from_env, parent_gone
def on_term(*_):
    print("term", parent_gone(), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
die_with_parent_from_env()
print("alive", os.getpid(), os.getppid(), parent_gone(), flush=True)
time.sleep(600)
"""
PREFIXES = {"exec": ["env"],  # execs in place, as `ip netns exec` does: the kernel's signal
            "fork": ["sh", "-c", '"$@"; exit $?', "sh"],  # sh stays between and outlives a SIGKILLed starter
            "detach": ["setsid", "-f"]}  # the child is nobody's: only the starter's start time identifies it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
@pytest.mark.parametrize("prefix", list(PREFIXES))
def test_a_child_behind_a_prefix_runs_and_still_ends_when_its_starter_is_killed(tmp_path: Path, prefix: str) -> None:
    import re

    from tests.conftest import proc_stat

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    root = Path(__file__).resolve().parents[1]
    starter = ("import time; from pathlib import Path; from dgan.run import ProcessGroup\n"
               f"group = ProcessGroup(Path({str(tmp_path / 'logs')!r}))\n"
               f"group.extra_env['PYTHONPATH'] = {f'{tmp_path}{os.pathsep}{root}'!r}\n"
               f"group.start('sleeper', [], 1, prefix={PREFIXES[prefix]!r}, module='sleeper')\n"
               "time.sleep(600)")
    runner = subprocess.Popen([sys.executable, "-c", starter], start_new_session=True, cwd=root)
    log = tmp_path / "logs" / "sleeper.log"
    pid = 0
    try:
        wait_until(lambda: log.exists() and "alive" in log.read_text(), 60, "the child behind the prefix to start")
        found = re.search(r"^alive (\d+) (\d+) (\w+)$", log.read_text(), re.M)
        assert found, log.read_text()
        pid, ppid, gone = int(found[1]), int(found[2]), found[3]
        assert gone == "False" and (ppid == runner.pid) == (prefix == "exec"), (ppid, runner.pid)
        started = proc_stat(pid)[2]  # type: ignore[index]
        runner.kill()
        assert runner.wait(60) == -signal.SIGKILL
        wait_until(lambda: not running(pid, started), 15, "the child to end with its starter")
        assert "term True" in log.read_text()  # and it knew why: no synthetic set for a dead run
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)
        if pid and prefix == "detach":  # in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runner.wait()

STOP_SIGNALS_PRELUDE = """
import os, signal, time
from dgan.stop_signals import stop_signals_unwind
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as without nohup
def kill(sig):
    os.kill(os.getpid(), sig)
    time.sleep(2)  # the handler runs between bytecodes: well before this ends
"""


def run_stop_signals(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=60)


def test_a_stop_signal_while_held_raises_when_the_hold_ends() -> None:
    done = run_stop_signals(STOP_SIGNALS_PRELUDE + """
with stop_signals_unwind() as stops:
    with stops.held():
        kill(signal.SIGTERM)  # held: recorded, not raised
        print("held", flush=True)
    print("not reached", flush=True)
""")
    assert done.stdout == "held\n" and done.returncode == 128 + signal.SIGTERM, done.stderr


def test_a_stop_signal_unwinds_once_then_the_default_action_comes_back() -> None:
    body = STOP_SIGNALS_PRELUDE + """
try:
    with stop_signals_unwind():
        try:
            kill(signal.SIGTERM)
        except SystemExit as e:
            print("unwound", e.code, flush=True)
            kill(signal.SIGHUP)  # during the cleanup: ignored
            print("cleanup finished", flush=True)
            raise
except SystemExit:
    pass
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGHUP) is signal.SIG_DFL, flush=True)
kill(signal.SIGTERM)  # the default action again: the process ends here
print("not reached", flush=True)
"""
    done = run_stop_signals(body)
    assert done.stdout.splitlines() == [f"unwound {128 + signal.SIGTERM}", "cleanup finished", "True True"], done.stderr
    assert done.returncode == -signal.SIGTERM
