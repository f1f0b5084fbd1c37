"""Reading message logs: summary, listing, decoding, images, re-sending, rebuilding, auditing.

Everything streams record by record (constant memory for any log size).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgan import protocol as P
from dgan.msglog import Direction, ReadReport, Record, iter_log, read_header

log = logging.getLogger("dgan.replay")

# node kinds the broker forwards to the generator (heartbeats stay at the broker)
NODE_KINDS = (P.Kind.HELLO, P.Kind.MASKS, P.Kind.FAKE_REQUEST, P.Kind.FEEDBACK, P.Kind.GOODBYE)


def decoded(path: Path, report: ReadReport | None = None) -> Iterator[tuple[int, Record, P.Message | None]]:
    """(index, record, message or None if the recorded frames do not decode)."""
    for i, rec in enumerate(iter_log(path, report)):
        try:
            msg = P.decode(rec.frames)
        except P.ProtocolError:
            msg = None
        yield i, rec, msg


# ------------------------------------------------------------------ summary


@dataclass
class Summary:
    header: dict[str, Any]
    report: ReadReport
    by_kind: Counter[str] = field(default_factory=Counter)
    bytes_by_kind: Counter[str] = field(default_factory=Counter)
    by_node: Counter[str] = field(default_factory=Counter)
    bytes_by_node: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0
    first: float | None = None
    last: float | None = None
    staleness: list[int] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0


def summarize(path: Path) -> Summary:
    report = ReadReport()
    s = Summary(read_header(path), report)
    gen_step = 0
    for _, rec, msg in decoded(path, report):
        size = sum(len(f) for f in rec.frames)
        s.first = rec.mono if s.first is None else s.first
        s.last = rec.mono
        if msg is None:
            s.undecodable += 1
            continue
        s.by_kind[msg.kind.name] += 1
        s.bytes_by_kind[msg.kind.name] += size
        if rec.direction in (Direction.FROM_NODE, Direction.TO_NODE):
            s.by_node[rec.peer] += 1
            s.bytes_by_node[rec.peer] += size
        if rec.direction == Direction.FROM_GENERATOR:
            gen_step = max(gen_step, msg.step)
        if msg.kind == P.Kind.FEEDBACK and rec.direction == Direction.FROM_NODE:
            s.staleness.append(max(0, gen_step - msg.step))
    return s


def list_messages(path: Path, kind: str | None = None, node: str | None = None, since: float | None = None,
                  until: float | None = None) -> Iterator[dict[str, Any]]:
    """One row per record, filtered; times are seconds from the first record."""
    t0: float | None = None
    for i, rec, msg in decoded(path):
        t0 = rec.mono if t0 is None else t0
        t = rec.mono - t0
        if (since is not None and t < since) or (until is not None and t > until):
            continue
        if node is not None and rec.peer != node:
            continue
        name = msg.kind.name if msg else "UNDECODABLE"
        if kind is not None and name != kind.upper():
            continue
        yield {"index": i, "t": t, "direction": rec.direction.name, "peer": rec.peer, "kind": name,
               "id": msg.msg_id if msg else None, "reply_to": msg.reply_to if msg else None,
               "step": msg.step if msg else None, "bytes": sum(len(f) for f in rec.frames)}


def describe(msg: P.Message) -> dict[str, Any]:
    """A message with its tensors summarised (dtype, shape, range, mean)."""
    tensors = {}
    for name, t in msg.tensors.items():
        f = t.astype(np.float64) if t.size else np.zeros(1)
        tensors[name] = {"dtype": str(t.dtype), "shape": list(t.shape), "min": float(f.min()),
                         "max": float(f.max()), "mean": float(f.mean())}
    return {"kind": msg.kind.name, "sender": msg.sender, "run": msg.run_id, "id": msg.msg_id,
            "reply_to": msg.reply_to, "step": msg.step, "time": msg.sent_at, "meta": msg.meta, "tensors": tensors}


def show(path: Path, index: int) -> tuple[Record, P.Message | None]:
    for i, rec, msg in decoded(path):
        if i == index:
            return rec, msg
    raise IndexError(f"{path} has no record {index}")


def save_images(path: Path, out: Path) -> int:
    """Masks (requests, uploads) and synthetic images (FAKES) as PNG; never anything else."""
    from PIL import Image

    from dgan.data.view import fakes_rgb, mask_rgb

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, rec, msg in decoded(path):
        if msg is None:
            continue
        if msg.kind in (P.Kind.FAKE_REQUEST, P.Kind.MASKS):
            for j, m in enumerate(msg.tensors["masks"]):
                stem = f"{i:06d}_{P.file_stem(rec.peer)}"
                Image.fromarray(mask_rgb(m)).save(out / f"{stem}_mask{j:03d}.png")  # ids > 1 in the palette
                n += 1
        elif msg.kind == P.Kind.FAKES:
            for j, im in enumerate(fakes_rgb(msg.tensors["fakes"])):
                stem = f"{i:06d}_{P.file_stem(rec.peer)}"
                Image.fromarray(im).save(out / f"{stem}_fake{j:03d}.png")
                n += 1
    return n


# ------------------------------------------------------------------ re-send


def send(path: Path, endpoint: str, speed: float | None = 1.0, timeout: float = 5.0) -> dict[str, int]:
    """Re-send the node-side traffic to a live broker; one DEALER per recorded node.

    ``speed`` scales the recorded pacing (2.0 = twice as fast); None sends as fast as possible.
    Replies are drained and counted, not interpreted.
    """
    import zmq

    ctx = zmq.Context.instance()
    socks: dict[str, zmq.Socket] = {}
    counts: Counter[str] = Counter()
    start_wall = time.monotonic()
    t0: float | None = None
    try:
        for rec in iter_log(path):
            if rec.direction != Direction.FROM_NODE:
                continue
            t0 = rec.mono if t0 is None else t0
            if speed:
                wait = (rec.mono - t0) / speed - (time.monotonic() - start_wall)
                if wait > 0:
                    time.sleep(wait)
            sock = socks.get(rec.peer)
            if sock is None:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
                socks[rec.peer] = sock
            sock.send_multipart(rec.frames)
            counts["sent"] += 1
            for s in socks.values():
                while s.poll(0):
                    s.recv_multipart()
                    counts["replies"] += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = False
            for s in socks.values():
                while s.poll(50):
                    s.recv_multipart()
                    counts["replies"] += 1
                    got = True
            if not got:
                break
    finally:
        for s in socks.values():
            s.close()
    return dict(counts)


# ------------------------------------------------------------------ rebuild


class RebuildError(Exception):
    pass


def generator_inputs(path: Path) -> tuple[list[tuple[str, P.Message]], dict[tuple[str, int], int], str]:
    """What the generator received, in order; which FAKES id answered each (node, request id); the run id."""
    undelivered: set[tuple[str, int]] = set()
    fakes_for: dict[tuple[str, int], int] = {}
    sessions = 0
    run_id = ""
    for _, rec, msg in decoded(path):
        if msg is None:
            continue
        if rec.direction == Direction.TO_NODE and msg.kind == P.Kind.ERROR:
            if msg.meta.get("code") == P.ErrorCode.NO_GENERATOR:
                undelivered.add((rec.peer, msg.reply_to))
        elif rec.direction == Direction.FROM_GENERATOR:
            run_id = run_id or msg.run_id
            if msg.kind == P.Kind.HELLO:
                sessions += 1
            elif msg.kind == P.Kind.FAKES:
                fakes_for[(rec.peer, msg.reply_to)] = msg.msg_id
    if sessions != 1:
        raise RebuildError(f"the log holds {sessions} generator sessions; rebuilding needs exactly one")
    inputs: list[tuple[str, P.Message]] = []
    generator_up = False
    for _, rec, msg in decoded(path):
        if msg is None:
            continue
        if rec.direction == Direction.FROM_GENERATOR and msg.kind == P.Kind.HELLO:
            generator_up = True
        elif rec.direction == Direction.TO_GENERATOR:
            inputs.append((rec.peer if msg.kind != P.Kind.ERROR else "", msg))
        elif (rec.direction == Direction.FROM_NODE and generator_up and msg.kind in NODE_KINDS
              and (rec.peer, msg.msg_id) not in undelivered):
            inputs.append((rec.peer, msg))
    return inputs, fakes_for, run_id


class _ReplayLink:
    """Stands in for the broker: records what the generator sends, maps new FAKES ids to recorded ones."""

    def __init__(self, fakes_for: dict[tuple[str, int], int]) -> None:
        self.fakes_for = fakes_for
        self.recorded_to_new: dict[int, int] = {}

    def send(self, to: str, msg: P.Message) -> bool:
        if msg.kind == P.Kind.FAKES:
            recorded = self.fakes_for.get((to, msg.reply_to))
            if recorded is not None:
                self.recorded_to_new[recorded] = msg.msg_id
        return True  # as the recorded run's sends did: the log holds what came back

    def broadcast(self, msg: P.Message) -> bool:
        return True

    def recv(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


def rebuild_generator(path: Path, from_ckpt: Path, out_ckpt: Path, threads: int | None = None,
                      until_step: int | None = None) -> int:
    """Re-apply the recorded traffic, in order, to the initial checkpoint; returns the step reached.

    ``until_step``: stop there (a run ended by a signal leaves messages in the log that it never read).

    Uses the run's own torch thread count (kept in the checkpoint) unless told otherwise: CPU kernels
    may sum in another order with another count, and the rebuild is meant to be bitwise.
    """
    import tempfile

    import torch

    from dgan.training.checkpoints import load_checkpoint
    from dgan.training.generator import GeneratorTrainer
    from nodes.generator_service import GeneratorService, ServiceConfig

    state = load_checkpoint(from_ckpt)
    torch.set_num_threads(threads or int(state.get("threads", 1)))
    trainer = GeneratorTrainer.from_state(state)
    inputs, fakes_for, run_id = generator_inputs(path)
    link = _ReplayLink(fakes_for)
    with tempfile.TemporaryDirectory() as tmp:
        service = GeneratorService(link, trainer, ServiceConfig(out=Path(tmp), run_id=run_id, checkpoint_every=0,
                                                                sample_every=0, synthesize=False))
        for route, msg in inputs:
            if trainer.step >= min(trainer.cfg.steps, until_step or trainer.cfg.steps):
                break
            if msg.kind == P.Kind.FEEDBACK or (msg.kind == P.Kind.ERROR and msg.reply_to):
                msg.reply_to = link.recorded_to_new.get(msg.reply_to, -1 if msg.kind == P.Kind.FEEDBACK else 0)
            service.handle(route, msg)
    trainer.save(out_ckpt)
    return trainer.step


# ------------------------------------------------------------------ audit


def fake_size(path: Path) -> int | None:
    """The side of the synthetic images in a log (what real images are compared at)."""
    for _, _, msg in decoded(path):
        if msg is not None and msg.kind == P.Kind.FAKES:
            return int(msg.tensors["fakes"].shape[-1])
    return None


@dataclass
class AuditReport:
    tensors: Counter[str] = field(default_factory=Counter)  # "direction kind name dtype rank" -> count
    violations: list[str] = field(default_factory=list)
    near_duplicates: list[str] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)  # node -> feedback mode announced at HELLO
    pixel_losses: Counter[str] = field(default_factory=Counter)  # node -> feedbacks that carried g_l1
    leakage: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> gradient/real-image statistics

    @property
    def ok(self) -> bool:
        return not self.violations and not self.near_duplicates


# (direction, kind, tensor name) -> what may cross the wire there
ALLOWED: dict[tuple[Direction, P.Kind, str], str] = {
    (Direction.FROM_NODE, P.Kind.MASKS, "masks"): "mask",
    (Direction.FROM_NODE, P.Kind.FAKE_REQUEST, "masks"): "mask",
    (Direction.FROM_NODE, P.Kind.FEEDBACK, "grad"): "gradient w.r.t. synthetic images",
    (Direction.FROM_NODE, P.Kind.FEEDBACK, "grad_scales"): "per-sample steps of an int8 gradient",
    (Direction.FROM_GENERATOR, P.Kind.FAKES, "fakes"): "synthetic image",
    (Direction.TO_NODE, P.Kind.FAKES, "fakes"): "synthetic image",
}


def _fingerprint(images: np.ndarray, side: int = 16) -> np.ndarray:
    """Zero-mean unit-norm grey thumbnails (N, side*side): near-duplicates have cosine near 1."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if t.ndim == 4 and t.shape[-1] == 3:  # NHWC -> NCHW
        t = t.permute(0, 3, 1, 2)
    grey = t.mean(1, keepdim=True)
    small = torch.nn.functional.adaptive_avg_pool2d(grey, side).flatten(1)
    small = small - small.mean(1, keepdim=True)
    return (small / small.norm(dim=1, keepdim=True).clamp_min(1e-8)).numpy()


def audit(path: Path, real_images: np.ndarray | None = None, threshold: float = 0.97,
          num_classes: int | None = None, real_masks: np.ndarray | None = None) -> AuditReport:
    """Every tensor that crossed the wire, anything that is not a mask, fake, gradient or scalar, pixel losses
    against real images, and (with the real pairs) gradients that carry the real images (``dgan.leakage``)."""
    report = AuditReport()
    real_fp = _fingerprint(real_images) if real_images is not None and len(real_images) else None
    classes = num_classes
    for i, rec, msg in decoded(path):
        if msg is None:
            continue  # undecodable frames were refused by the broker; they carried nothing onward
        if rec.direction == Direction.FROM_NODE and msg.kind == P.Kind.HELLO:
            report.modes[rec.peer] = str(msg.meta.get("feedback", "unknown"))
        if rec.direction == Direction.FROM_NODE and msg.kind == P.Kind.FEEDBACK and "g_l1" in msg.meta["losses"]:
            report.pixel_losses[rec.peer] += 1
        if msg.kind == P.Kind.WELCOME and classes is None:
            classes = int(msg.meta.get("config", {}).get("model", {}).get("num_classes", 2))
        for name, t in msg.tensors.items():
            report.tensors[f"{rec.direction.name} {msg.kind.name} {name} {t.dtype} rank{t.ndim}"] += 1
            what = ALLOWED.get((rec.direction, msg.kind, name))
            where = f"record {i} ({rec.direction.name} {rec.peer} {msg.kind.name} '{name}')"
            if what is None:
                report.violations.append(f"{where}: a tensor of this kind is never allowed on the wire")
                continue
            if name == "grad_scales" and not (t.dtype == np.float32 and t.ndim == 1 and "grad" in msg.tensors
                                              and msg.tensors["grad"].dtype == np.int8
                                              and len(t) == len(msg.tensors["grad"])):
                report.violations.append(f"{where}: grad_scales must be float32 per-sample steps beside an int8 "
                                         "gradient")
                continue
            if what == "mask" and t.size and int(t.max()) >= (classes or 2):
                report.violations.append(f"{where}: values up to {int(t.max())} are not class ids below "
                                         f"{classes or 2}: not a mask")
            if real_fp is not None and t.ndim == 4 and t.size:  # image-shaped: fakes and gradients
                # absolute: a sign-coded leak (the L1 gradient) is anti-correlated with the image
                sims = np.abs(_fingerprint(t.astype(np.float32)) @ real_fp.T)
                best = sims.max(axis=1)
                for j in np.nonzero(best >= threshold)[0]:
                    report.near_duplicates.append(f"{where} item {j}: |cosine| {best[j]:.3f} to real image "
                                                  f"{int(sims[j].argmax())}")
    for node, n in sorted(report.pixel_losses.items()):
        report.violations.append(f"node {node}: {n} feedback(s) carried g_l1, a pixel loss against its real images")
    if real_images is not None and real_masks is not None:
        from dgan.leakage import gradient_leakage

        for node, stats in gradient_leakage(path, real_images, real_masks).items():
            report.leakage[node] = stats.summary()
            report.violations += [f"node {node}: {problem}" for problem in stats.leaks()]
    return report
