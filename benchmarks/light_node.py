"""A light discriminator node for the network benchmarks: the real node, minus the discriminator.

It is ``DiscriminatorNode`` itself (its link, pipeline, retries and stats),
with the trainer swapped for one that answers every batch with a fixed,
precomputed gradient after ``--work-ms`` of sleep.  So a 2-core machine can
host dozens of them (``dgan bench scale``), and the wire, not this CPU, sets
the pace (``dgan bench wan --light``: the regime of a GPU generator and
GPU nodes).  It accepts the ``dgan node`` command line that
``dgan.commands.node_args`` builds, plus ``--work-ms``, and ignores the
options that only a real discriminator uses.  Benchmarks only.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dgan.choices import GradDtype, values
from dgan.data.spec import load_data
from dgan.feedback import FeedbackConfig
from dgan.grad_codec import quantize_int8
from dgan.logs import setup_logging
from dgan.networks import ModelConfig
from dgan.training.discriminator import Scored
from dgan.transport.zmq_link import ZmqNodeLink
from nodes.discriminator_node import DiscriminatorNode, NodeConfig


class FixedGradientTrainer:
    """Stands in for ``DiscriminatorTrainer``: the same interface, a constant answer, a set amount of work."""

    warmup_steps = 0

    def __init__(self, cfg: ModelConfig, work_s: float, grad_dtype: str) -> None:
        self.cfg, self.work_s = cfg, work_s
        self._grads: dict[tuple[int, ...], Scored] = {}
        self._dtype = grad_dtype

    def warm_up(self, masks: np.ndarray, reals: np.ndarray) -> None:
        """No segmenter to warm up."""

    def score(self, masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray, grad_dtype: str = "float16",
              more_reals: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Scored:
        """The same answer whatever the batches; ``more_reals`` (a node's further D steps) only for the interface."""
        shape = tuple(fakes.shape)
        if shape not in self._grads:  # small and random, like a real gradient on the wire
            rng = np.random.default_rng(0)
            grad = (rng.standard_normal(shape) * 1e-3).astype(np.float32)
            losses = {"d_real": 0.7, "d_fake": 0.7, "g_adv": 0.7}
            if grad_dtype == "int8":
                q, steps = quantize_int8(grad, rng)
                self._grads[shape] = Scored(q, losses, 1.0, steps)
            else:
                self._grads[shape] = Scored(grad.astype(grad_dtype), losses, 1.0)
        if self.work_s > 0:
            time.sleep(self.work_s)
        return self._grads[shape]


class LightNode(DiscriminatorNode):
    def __init__(self, *args: object, work_s: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.work_s = work_s

    def _on_welcome(self, msg) -> None:  # type: ignore[no-untyped-def]
        super()._on_welcome(msg)
        if self.trainer is not None and not isinstance(self.trainer, FixedGradientTrainer):
            self.trainer = FixedGradientTrainer(self.trainer.cfg, self.work_s, self.cfg.grad_dtype)  # type: ignore
            self.warmup_left = 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="node")
    ap.add_argument("--name", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--data", default="scenes")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pipeline", default="2")
    ap.add_argument("--heartbeat", type=float, default=2.5)
    ap.add_argument("--stats", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-ms", type=float, default=0.0)
    ap.add_argument("--grad-dtype", default="float16", choices=values(GradDtype))
    ap.add_argument("--many", type=int, default=1, help="nodes in this process, NAME-0 .. NAME-(N-1), one thread "
                    "and one broker connection each (dgan bench scale)")
    ap.add_argument("--log-level", default="WARNING")
    args, _ = ap.parse_known_args(argv)  # a real node's other options mean nothing here
    setup_logging(args.log_level, "plain", args.name)
    pairs = load_data(args.data, args.image_size, count=16, seed=args.seed)
    auto = args.pipeline == "auto"
    names = [args.name] if args.many <= 1 else [f"{args.name}-{i}" for i in range(args.many)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    nodes, links = [], []
    for name in names:
        cfg = NodeConfig(name=name, batch_size=args.batch_size, pipeline=2 if auto else int(args.pipeline),
                         auto_pipeline=auto, seed=args.seed, judge=False, grad_dtype=args.grad_dtype,
                         feedback=FeedbackConfig("adversarial"))
        links.append(ZmqNodeLink(args.broker, name, heartbeat_interval=args.heartbeat,
                                 hello_meta=DiscriminatorNode.hello_meta(pairs.images, cfg.feedback)))
        nodes.append(LightNode(links[-1], pairs.images, pairs.masks, cfg, work_s=args.work_ms / 1e3))
    threads = [threading.Thread(target=n.run, args=(stop,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads) and not stop.is_set():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    stop.set()
    for t in threads:
        t.join(10)
    for link in links:
        link.close()
    if args.stats is not None:
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**n.stats.to_dict(), "name": n.cfg.name, "link": dict(lk.counters)}
                for n, lk in zip(nodes, links, strict=True)]
        args.stats.write_text(json.dumps(rows[0] if args.many <= 1 else rows, indent=2))


if __name__ == "__main__":
    from dgan.stop_signals import die_with_parent_from_env

    die_with_parent_from_env()  # started by dgan.run: ends with it
    main()
