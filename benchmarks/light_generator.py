"""A light generator for the network benchmarks: the real service, a generator that costs what a GPU's would.

``GeneratorService`` itself (its link, round policy, staleness bound, bounds
per node, STATUS, run.json), with a trainer that answers each request with
fixed fakes after ``--work-ms`` per sample and counts feedback instead of
backpropagating it.  On this 2-core machine a real G at 128 px makes about 30
samples/s, so its compute, not the wire, would set every pace; a GPU makes
hundreds.  It accepts the ``dgan generator`` command line that
``dgan.commands.generator_args`` builds, plus ``--work-ms``.  Benchmarks only.
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgan import grad_codec
from dgan.logs import setup_logging
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, InFlight, Outcome, TrainConfig
from dgan.transport.zmq_link import ZmqGeneratorLink
from nodes.generator_service import GeneratorService, ServiceConfig


class FixedFakesTrainer(GeneratorTrainer):
    """Serves fixed fakes and applies nothing; the bookkeeping (steps, staleness, in-flight) is the real one's."""

    def __init__(self, model: ModelConfig, train: TrainConfig, work_s_per_sample: float) -> None:
        super().__init__(model, train)
        self.work_s = work_s_per_sample
        self._fakes: dict[tuple[int, ...], np.ndarray] = {}

    def generate(self, node: str, key: int, masks: np.ndarray, request_id: int = 0) -> np.ndarray:
        shape = (len(masks), 3, *np.asarray(masks).shape[1:])
        if shape not in self._fakes:
            self._fakes[shape] = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8) \
                if self.cfg.fake_dtype == "uint8" else np.zeros(shape, self.cfg.fake_dtype)
        if self.work_s > 0:
            time.sleep(self.work_s * len(masks))
        self.inflight[key] = InFlight(node, self.step, torch.empty(shape), [])
        return self._fakes[shape]

    def apply_feedback(self, node: str, key: int, grad: np.ndarray, grad_scale: float = 1.0,
                       weight: float = 1.0, grad_scales: np.ndarray | None = None) -> tuple[Outcome, int, str]:
        inf = self.inflight.get(key)
        if inf is None or inf.node != node:
            return Outcome.UNKNOWN, -1, f"no request {key} from {node} is in flight"
        del self.inflight[key]
        if tuple(grad.shape) != tuple(inf.fakes.shape):
            return Outcome.REJECTED, -1, "gradient shape does not match the fakes"
        try:
            grad_codec.decode(grad, grad_scales)  # the real generator's decoding work (int8: scales applied)
        except ValueError as exc:
            return Outcome.REJECTED, -1, str(exc)
        staleness, factor, reason = self.stale_factor(inf.step_made)
        if factor is None:
            return Outcome.DROPPED_STALE, staleness, reason
        self.pending += 1
        self.samples_applied += int(grad.shape[0])
        return (Outcome.APPLIED if factor == 1.0 else Outcome.DISCOUNTED), staleness, ""

    def update(self) -> bool:
        if self.pending == 0:
            return False
        self.pending = 0
        self.step += 1
        return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="generator")
    ap.add_argument("--broker", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--mode", default="async")
    ap.add_argument("--update-every", default="1")
    ap.add_argument("--max-staleness", type=int, default=8)
    ap.add_argument("--stale-policy", default="drop")
    ap.add_argument("--fake-dtype", default="float16")  # as `dgan generator`
    ap.add_argument("--heartbeat", type=float, default=2.5)
    ap.add_argument("--work-ms", type=float, default=2.0, help="per sample")
    ap.add_argument("--log-level", default="WARNING")
    args, _ = ap.parse_known_args(argv)  # the real generator's other options mean nothing here
    setup_logging(args.log_level, "plain", "generator")
    model = ModelConfig(image_size=args.image_size, g_width=4, g_depth=3, d_width=8)
    every = -1 if args.update_every == "auto" else int(args.update_every)
    train = TrainConfig(steps=args.steps, mode=args.mode, update_every=every,
                        max_staleness=args.max_staleness, stale_policy=args.stale_policy,
                        fake_dtype=args.fake_dtype)
    trainer = FixedFakesTrainer(model, train, args.work_ms / 1e3)
    link = ZmqGeneratorLink(args.broker, heartbeat_interval=args.heartbeat)
    service = GeneratorService(link, trainer, ServiceConfig(out=args.out, run_id=uuid.uuid4().hex[:12],
                                                            checkpoint_every=0, sample_every=0, synthesize=False))

    def stop(signum: int, _frame: Any) -> None:
        service.request_stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        service.run()
    finally:
        link.close()


if __name__ == "__main__":
    from dgan.stop_signals import die_with_parent_from_env

    die_with_parent_from_env()  # started by dgan.run: ends with it
    main()
