"""``dgan run``: broker, generator and N nodes as separate OS processes on this machine.

Each process is the real CLI command (a fresh interpreter, as with the spawn
start method) over tcp loopback.  The data is partitioned across the nodes
through small shard files; everything lands under the output folder.  Every
child is stopped on the way out, Ctrl-C, SIGTERM and SIGHUP included, and on Linux gets a SIGTERM if this
process is SIGKILLed (``dgan.stop_signals``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dgan.commands import Ports, broker_args, generator_args, node_args
from dgan.data.partition import partition
from dgan.data.shards import IMAGE_EXTS, scenes_spec
from dgan.feedback import DEFAULT_MODE
from dgan.openmp_policy import children_env, usable_cpus
from dgan.stop_signals import DIE_WITH_PARENT, starter_token, stop_signals_unwind

log = logging.getLogger("dgan.run")

HELDOUT_SEED_BASE = 50_000_000  # built-in scenes at or above this seed are never given to a node


@dataclass(frozen=True)
class Placement:
    """Where each process runs, for runs across hosts (``dgan bench wan``): a command prefix per process
    (``ip netns exec NS``), the address the broker binds and the generator dials, and what each node dials
    (by default the broker; a local relay on a shaped path, say)."""

    prefix: dict[str, list[str]] = field(default_factory=dict)
    broker_host: str = "127.0.0.1"
    node_host: dict[str, str] = field(default_factory=dict)
    ports: Ports | None = None  # None: free ones on this host's loopback


@dataclass
class RunConfig:
    nodes: int = 4
    steps: int = 300
    out: Path = Path("runs/latest")
    data: Path | None = None
    partition: str = "iid"
    scenes: int = 800
    record: Path | None = None
    image_size: int = 128
    scene_variant: str = "buildings"  # with data None: the scenes' variant
    num_classes: int = 2  # > 2: class-id masks (a classes.json folder, or scenes with roads)
    g_width: int = 32
    d_width: int = 32
    batch_size: int = 8
    pipeline: int | str = 2  # per node; "auto": deepen to cover the round trip
    mode: str = "async"
    feedback: str = DEFAULT_MODE.value  # every node's --feedback
    lambda_l1: float = 100.0  # with feedback l1
    node_args: list[str] = field(default_factory=list)  # more options for every node
    threads: int = 1  # torch threads per node process
    generator_threads: int = 0  # 0: min(2, cores); the generator does most of the FLOPs (G forward + backward)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # every process's --precision (auto: bf16 only where the CPU has it natively)
    channels_last: bool = False  # the generator's G in NHWC (dgan generator --channels-last)
    delays: list[float] = field(default_factory=list)  # per node, seconds per batch
    checkpoint_every: int = 100
    sample_every: int = 50
    synthesize: bool = True
    heartbeat: float = 2.5
    extra_generator_args: list[str] = field(default_factory=list)
    shards: list[dict[str, Any]] | None = None  # explicit per-node data specs (overrides data/partition)
    timeout: float = 3600.0
    placement: Placement = field(default_factory=Placement)
    node_module: str = "dgan"  # what runs each node's command line (benchmarks.light_node for network benches)
    generator_module: str = "dgan"  # likewise for the generator's (benchmarks.light_generator)


def write_shards(cfg: RunConfig) -> list[Path]:
    shard_dir = cfg.out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    specs: list[dict[str, Any]]
    if cfg.shards is not None:
        specs = cfg.shards
    elif cfg.data is None:
        parts = partition(cfg.scenes, cfg.nodes, cfg.partition, cfg.seed)
        specs = [scenes_spec([cfg.seed * 1_000_000 + i for i in part], cfg.image_size, cfg.scene_variant)
                 for part in parts]
    else:
        stems = sorted(p.stem for p in (cfg.data / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        parts = partition(len(stems), cfg.nodes, cfg.partition, cfg.seed)
        specs = [{"kind": "folder", "path": str(cfg.data.resolve()), "names": [stems[i] for i in part],
                  "binary": cfg.num_classes == 2} for part in parts]
    paths = []
    for i, spec in enumerate(specs):
        p = shard_dir / f"node{i}.json"
        p.write_text(json.dumps(spec))
        paths.append(p)
    return paths


class ProcessGroup:
    """Children started by ``dgan run``; ``stop_all`` leaves no orphan.

    ``hold``: entered around each start and around ``stop_all``, so that a stop signal cannot land between a
    child's fork and its record, or halfway through stopping them (``StopSignals.held``).

    A child that calls ``die_with_parent_from_env`` (``python -m dgan`` does) also ends when this process does,
    SIGKILL included: the kernel ties that to the thread that started it, so start and stop children on one
    thread that outlives them, as ``run_local`` does (behind a prefix that forks, the child checks once a
    second). A prefix that clears the environment (``sudo``'s ``env_reset``) drops that request."""

    def __init__(self, log_dir: Path, hold: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self.log_dir = log_dir
        self.hold = hold
        self.extra_env: dict[str, str] = {}  # for every child (dgan.openmp_policy)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], threads: int, prefix: list[str] | None = None,
              module: str = "dgan") -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        env[DIE_WITH_PARENT] = starter_token()  # the child ends with us, even if we are SIGKILLed
        with self.hold(), open(self.log_dir / f"{name}.log", "wb") as fh:
            proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", module, *args], stdout=fh,
                                    stderr=subprocess.STDOUT, env=env)
            self.procs[name] = proc
        return proc

    def stop_all(self, grace: float = 10.0) -> None:
        with self.hold():
            self._stop_all(grace)

    def _stop_all(self, grace: float) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_local(cfg: RunConfig, watch: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run everything; ``watch(pub_endpoint)`` is called a few times a second while training."""
    with stop_signals_unwind() as stops:
        return _run_local(cfg, watch, ProcessGroup(cfg.out / "logs", stops.held))


def _run_local(cfg: RunConfig, watch: Callable[[str], None] | None, group: ProcessGroup) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    shards = write_shards(cfg)
    place = cfg.placement
    ports = replace(place.ports or Ports.free(), host=place.broker_host)
    hb = cfg.heartbeat
    gen_threads = cfg.generator_threads or min(2, os.cpu_count() or 1)
    group.extra_env, why = children_env(os.environ, 1 + gen_threads + len(shards) * cfg.threads, usable_cpus())
    log.info("run processes: %s", why)
    t0 = time.time()
    try:
        group.start("broker", broker_args(ports, record=cfg.record, heartbeat=hb), 1, place.prefix.get("broker"))
        gen = group.start("generator", generator_args(
            ports, cfg.out, cfg.steps, image_size=cfg.image_size, g_width=cfg.g_width, d_width=cfg.d_width,
            synthesize=cfg.synthesize, checkpoint_every=cfg.checkpoint_every, sample_every=cfg.sample_every,
            heartbeat=hb, extra=["--mode", cfg.mode, "--seed", str(cfg.seed), "--threads", str(gen_threads),
                                 "--num-classes", str(cfg.num_classes),
                                 "--device", cfg.device, "--precision", cfg.precision,
                                 *(["--channels-last"] if cfg.channels_last else []),
                                 *cfg.extra_generator_args]), gen_threads,
            place.prefix.get("generator"), cfg.generator_module)
        for i, shard in enumerate(shards):
            delay = cfg.delays[i] if i < len(cfg.delays) else 0.0
            name = f"node{i}"
            group.start(name, node_args(
                replace(ports, host=place.node_host.get(name, ports.host)), name, shard, image_size=cfg.image_size,
                batch_size=cfg.batch_size, heartbeat=hb,
                extra=["--pipeline", str(cfg.pipeline), "--seed", str(cfg.seed + i), "--threads", str(cfg.threads),
                       "--device", cfg.device, "--precision", cfg.precision, "--delay", str(delay), "--stats",
                       str(cfg.out / "nodes" / f"node{i}.json"), "--feedback", cfg.feedback,
                       "--lambda-l1", str(cfg.lambda_l1), *cfg.node_args]), cfg.threads, place.prefix.get(name),
                cfg.node_module)
        pub = ports.pub_endpoint
        while gen.poll() is None:
            if time.time() - t0 > cfg.timeout:
                raise TimeoutError(f"the run took longer than {cfg.timeout:.0f} s")
            if watch is not None:
                watch(pub)
            time.sleep(0.2)
        if gen.returncode != 0:
            raise RuntimeError(f"the generator exited with {gen.returncode}; see {cfg.out / 'logs' / 'generator.log'}")
        for name, proc in group.procs.items():  # nodes got GOODBYE and end by themselves
            if name.startswith("node"):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop after the run; terminating it", name)
    finally:
        group.stop_all()
    summary = json.loads((cfg.out / "run.json").read_text())
    summary["total_wall_s"] = round(time.time() - t0, 2)
    summary["out"] = str(cfg.out)
    (cfg.out / "run.json").write_text(json.dumps(summary, indent=2))
    return summary
