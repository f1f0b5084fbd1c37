"""The discriminator node: private (image, mask) pairs, its own D, never waits for other nodes.

Loop: request fakes for a batch of masks (keeping ``pipeline`` requests in
flight so the generator works while this node trains), score the fakes that
come back with one D step, send the gradient w.r.t. the fakes and the loss
scalars.  Real images and D's weights never leave this object.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgan import protocol as P
from dgan.feedback import L1_WARNING, FeedbackConfig
from dgan.networks import ModelConfig
from dgan.tensor_frames import tensor_wire_nbytes
from dgan.training.discriminator import DiscriminatorTrainer, PairSampler
from dgan.training.judge import LabelJudge, TransferJudge
from dgan.transport.base import LinkClosed, NodeLink

log = logging.getLogger("dgan.node")


@dataclass
class NodeConfig:
    name: str
    batch_size: int = 8
    pipeline: int = 2  # requests in flight; with auto_pipeline the least it keeps
    auto_pipeline: bool = False  # deepen to cover the round trip (see ``pipeline_depth``)
    grad_dtype: str = "float16"
    delay: float = 0.0  # artificial seconds per batch, to emulate slow sites
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # D's, the semantic segmenter's and the judges' passes: fp32, bf16 or auto (native)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)  # the operator's choice, never the generator's
    request_timeout: float = 60.0
    feedback_retry: float = 10.0  # seconds a FEEDBACK that could not leave is retried before it is given up
    mask_chunk: int = 256
    samples_dir: Path | None = None  # save (mask | real | synthetic) grids here; they never leave the node
    sample_every: int = 50  # batches
    judge: bool = True  # report label_iou: a local segmenter's IoU on the fakes against their masks
    judge_steps: int = 2  # the judge's training steps on real pairs per batch
    judge_after: int = 50  # report label_iou once the judge has trained this many steps
    transfer_every: int = 16  # with judge: every this many batches, transfer_iou (train on fakes, test here); 0 off
    transfer_steps: int = 60  # the transfer segmenter's steps per verdict, spread over its batches
    positive_share: float | None = None  # sparse targets: share of crops placed on a foreground pixel

    def __post_init__(self) -> None:
        from dgan.choices import GradDtype, Precision, values

        if self.grad_dtype not in values(GradDtype):
            raise ValueError(f"grad_dtype must be one of {', '.join(values(GradDtype))}, got {self.grad_dtype!r}")
        if self.precision not in values(Precision):
            raise ValueError(f"precision must be one of {', '.join(values(Precision))}, got {self.precision!r}")


@dataclass
class Outstanding:
    masks: np.ndarray
    reals: np.ndarray
    sent: float


@dataclass
class NodeStats:
    batches: int = 0
    samples: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    wait_s: float = 0.0  # blocked waiting for fakes (with a request out; not waiting for a generator to exist)
    compute_s: float = 0.0  # D step and gradient
    judge_s: float = 0.0  # the label judge's verdicts and training steps
    codec_s: float = 0.0  # encoding and sending requests and feedback
    rtt_s: float = 0.0  # request sent -> fakes back, summed over answered requests
    wire_s: float = 0.0  # the same less the time the generator held each request (its queue and compute)
    wire_bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    first_request: float = 0.0  # monotonic: the first FAKE_REQUEST sent
    last_feedback: float = 0.0  # monotonic: the last FEEDBACK sent
    pipeline: int = 0  # requests kept in flight now
    pipeline_sum: int = 0  # summed over batches, for the mean depth
    precision: str = ""  # what D runs in here, --precision auto resolved ("" before the generator's WELCOME)
    wire_recent: deque[float] = field(default_factory=lambda: deque(maxlen=1024))  # last round trips less held
    wire_recent_at: deque[float] = field(default_factory=lambda: deque(maxlen=1024))  # when each (monotonic)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "samples": self.samples, "losses": self.losses, "wait_s": self.wait_s,
                "compute_s": self.compute_s, "judge_s": self.judge_s, "codec_s": self.codec_s,
                "rtt_s": self.rtt_s, "wire_s": self.wire_s, "comm_wait_s": self.comm_wait_s,
                "active_s": max(0.0, self.last_feedback - self.first_request),
                "wire_bytes": self.wire_bytes, "errors": dict(self.errors), "pipeline": self.pipeline,
                "pipeline_mean": self.pipeline_sum / self.batches if self.batches else float(self.pipeline),
                "precision": self.precision,
                "wire_recent_s": [round(w, 5) for w in self.wire_recent],
                "wire_recent_at": [round(t, 4) for t in self.wire_recent_at],  # this host's monotonic clock
                "wall_s": time.monotonic() - self.started}

    @property
    def comm_wait_s(self) -> float:
        """The node's blocked time that the wire, not the generator, accounts for: waiting x wire / round trip."""
        return self.wait_s * (self.wire_s / self.rtt_s) if self.rtt_s > 0 else 0.0


def pipeline_depth(wire_s: float, service_s: float, least: int, most: int) -> int:
    """Requests to keep in flight so the wire never idles the node: ``least`` covers the generator's
    own time (as on a LAN), and one more request per ``service_s`` (the node's work per batch) that
    the wire's round trip ``wire_s`` lasts (its bandwidth-delay product, in batches), less a quarter
    batch of slack.  The generator's queueing is left out on purpose: a deeper pipeline only lengthens
    that queue and the staleness.  Bounded by what the generator keeps per node."""
    if not (wire_s >= 0 and service_s > 0) or not math.isfinite(wire_s / service_s):
        return max(1, min(least, most))
    return max(1, min(most, least + math.ceil(max(0.0, wire_s / service_s - 0.25))))


class DiscriminatorNode:
    def __init__(self, link: NodeLink, images: np.ndarray, masks: np.ndarray, cfg: NodeConfig) -> None:
        self.link, self.cfg = link, cfg
        self.images, self.masks = images, masks
        self.trainer: DiscriminatorTrainer | None = None
        self.fatal: str | None = None  # why the node stopped by itself (the CLI exits non-zero with it)
        self.judge: LabelJudge | None = None
        self.transfer: TransferJudge | None = None
        self.transfer_iou: float | None = None  # the last transfer verdict, sent with the next feedback
        self.judge_sampler: PairSampler | None = None
        self.sampler: PairSampler | None = None
        self.outstanding: dict[int, Outstanding] = {}
        self.stats = NodeStats()
        self.done = False
        self.welcomed = False
        self.warmup_left = 0  # local D steps still to do before requesting fakes
        self._retry_at = 0.0
        self.unsent: list[tuple[float, P.Message]] = []  # FEEDBACK that could not leave: (first try, message)
        self.max_inflight = 4  # what the generator keeps per node (its WELCOME says)
        self._wire_ewma = 0.0  # seconds: request sent -> fakes arrived, less the generator's time
        self._service_ewma = 0.0  # seconds: this node's own work per batch
        self.stats.pipeline = cfg.pipeline

    @staticmethod
    def hello_meta(images: np.ndarray, feedback: FeedbackConfig | None = None) -> dict[str, Any]:
        """What HELLO announces: the data size and the feedback mode this node enforces."""
        return {"dataset_size": len(images), "image_size": int(images.shape[1]),
                "feedback": (feedback or FeedbackConfig()).mode.value}

    def run(self, stop: threading.Event | None = None, max_batches: int | None = None) -> NodeStats:
        log.info("node %s: %d private pairs, feedback mode %s; waiting for the generator", self.cfg.name,
                 len(self.images), self.cfg.feedback.mode.value)
        if self.cfg.feedback.leaks:
            log.warning("node %s: %s", self.cfg.name, L1_WARNING)
        while not self.done and not (stop is not None and stop.is_set()):
            if max_batches is not None and self.stats.batches >= max_batches:
                break
            t0, waiting = time.monotonic(), bool(self.outstanding)
            try:
                msg = self.link.recv(0.0 if self.warmup_left and self.welcomed else 0.5)
            except LinkClosed:
                log.exception("node %s: the link to the broker failed; stopping", self.cfg.name)
                break
            if waiting:
                self.stats.wait_s += time.monotonic() - t0
            if msg is not None:
                try:
                    self._handle(msg)
                except Exception:  # a bad message must not end the node
                    self.stats.errors["internal"] += 1
                    log.exception("node %s: error handling %s", self.cfg.name, msg.kind.name)
            self._expire_requests()
            self._resend_feedback()
            self._fill_pipeline()
        return self.stats

    # ------------------------------------------------------------ handlers

    def _handle(self, msg: P.Message) -> None:
        if msg.kind == P.Kind.WELCOME:
            self._on_welcome(msg)
        elif msg.kind == P.Kind.FAKES:
            self._on_fakes(msg)
        elif msg.kind == P.Kind.ERROR:
            self._on_error(msg)
        elif msg.kind == P.Kind.GOODBYE:
            log.info("node %s: the generator ended the run (%s)", self.cfg.name, msg.meta.get("reason", ""))
            self.done = True

    def _on_welcome(self, msg: P.Message) -> None:
        config = msg.meta["config"]
        # Architecture only: the loss (and so what the gradient reveals) stays this node's own setting.
        model = ModelConfig.from_dict(config["model"])
        top = int(self.masks.max(initial=0))
        if top >= model.num_classes:  # every request would be refused: say so once and stop, do not retry forever
            self.fatal = (f"this node's masks hold class {top}, but the run has {model.num_classes} classes "
                          f"(start the generator with --num-classes {top + 1}, or give this node binary masks)")
            log.error("node %s: %s", self.cfg.name, self.fatal)
            self.done = True
            return
        if self.trainer is None or self.trainer.cfg != model:
            if self.trainer is not None:
                log.warning("node %s: the generator changed the model; a new discriminator, from fresh random "
                            "weights", self.cfg.name)
            # D's initial weights come from the OS, not from --seed: a generator that could compute them would
            # learn more from each gradient (and could force a reset with a changed WELCOME).
            self.trainer = DiscriminatorTrainer(model, self.cfg.feedback, seed=None, device=self.cfg.device,
                                                precision=self.cfg.precision)
            self.stats.precision = self.trainer.precision
            self.trainer.set_colour_stats(self.images, self.masks)  # --lambda-colour: computed here, never sent
            if self.cfg.precision != self.trainer.precision:
                log.info("node %s: precision %s resolves to %s here", self.cfg.name, self.cfg.precision,
                         self.trainer.precision)
            judge_precision = self.trainer.precision  # resolved: fp32 or bf16
            self.judge = LabelJudge(seed=None, device=self.cfg.device, precision=judge_precision) \
                if self.cfg.judge else None
            self.judge_sampler = PairSampler(self.images, self.masks, model.image_size, seed=self.cfg.seed + 7919,
                                             positive_share=self.cfg.positive_share)
            self.transfer = self.transfer_iou = None
            if self.cfg.judge and self.cfg.transfer_every > 0:  # a fixed set of the node's own crops to test on
                held = PairSampler(self.images, self.masks, model.image_size, seed=self.cfg.seed + 104729,
                                   positive_share=self.cfg.positive_share).batch(min(64, len(self.images)))
                self.transfer = TransferJudge(*held, every=self.cfg.transfer_every, steps=self.cfg.transfer_steps,
                                              batch=self.cfg.batch_size, device=self.cfg.device,
                                              precision=judge_precision)
            self.warmup_left = self.trainer.warmup_steps
            if self.warmup_left:
                log.info("node %s: training its segmenter on its own pairs for %d steps before the first feedback",
                         self.cfg.name, self.warmup_left)
            self.sampler = PairSampler(self.images, self.masks, model.image_size, seed=self.cfg.seed,
                                       positive_share=self.cfg.positive_share)
        cap = config.get("max_inflight", 4)
        self.max_inflight = cap if type(cap) is int and 1 <= cap <= 64 else 4  # peer input
        self.run_id = msg.run_id
        self.outstanding.clear()  # a (re)started generator knows none of them
        self.welcomed = True
        log.info("node %s: welcomed to run %s", self.cfg.name, msg.run_id)
        if config.get("need_masks", True):
            self._upload_masks(model.image_size)

    def _upload_masks(self, size: int) -> None:
        masks = self.masks[:, :size, :size]
        chunks = max(1, -(-len(masks) // self.cfg.mask_chunk))
        for c in range(chunks):
            part = masks[c * self.cfg.mask_chunk:(c + 1) * self.cfg.mask_chunk]
            self.link.send(P.make(P.Kind.MASKS, self.cfg.name, run_id=self.run_id,
                                  meta={"chunk": c, "chunks": chunks}, tensors={"masks": part}))
        log.info("node %s: uploaded %d masks in %d chunk(s)", self.cfg.name, len(masks), chunks)

    def _fill_pipeline(self) -> None:
        if not self.welcomed or self.done or self.sampler is None or time.monotonic() < self._retry_at:
            return
        if self.warmup_left and self.trainer is not None:  # one step per loop pass: heartbeats keep flowing
            reals, masks = self.sampler.batch(self.cfg.batch_size)
            t0 = time.monotonic()
            self.trainer.warm_up(masks, reals)
            self.stats.compute_s += time.monotonic() - t0
            self.warmup_left -= 1
            return
        while len(self.outstanding) < self.stats.pipeline:
            reals, masks = self.sampler.batch(self.cfg.batch_size)
            t0 = time.monotonic()
            msg = P.make(P.Kind.FAKE_REQUEST, self.cfg.name, run_id=self.run_id, tensors={"masks": masks})
            if not self.link.send(msg):
                self._retry_at = time.monotonic() + 1.0  # no broker to take it: try again shortly
                return
            self.stats.codec_s += time.monotonic() - t0
            self.stats.wire_bytes += tensor_wire_nbytes(P.Kind.FAKE_REQUEST, "masks", masks)
            self.outstanding[msg.msg_id] = Outstanding(masks, reals, time.monotonic())
            self.stats.first_request = self.stats.first_request or self.outstanding[msg.msg_id].sent

    def _on_fakes(self, msg: P.Message) -> None:
        req = self.outstanding.pop(msg.reply_to, None)
        if req is None or self.trainer is None:
            self.stats.errors["unexpected_fakes"] += 1
            return
        fakes = msg.tensors["fakes"]
        if fakes.shape != (len(req.masks), 3, *req.masks.shape[1:]):
            self.stats.errors["bad_fakes"] += 1
            log.warning("node %s: fakes of shape %s do not match the request", self.cfg.name, fakes.shape)
            return
        self.stats.wire_bytes += fakes.nbytes
        rtt = (msg.received_at or time.monotonic()) - req.sent  # arrival, not when this loop got to it
        held = msg.meta.get("held_s", 0.0)
        sane = isinstance(held, (int, float)) and not isinstance(held, bool) and 0.0 <= held < 1e6
        held = float(held) if sane else 0.0  # peer input
        wire = max(0.0, rtt - min(held, rtt))  # the wire and the broker, both ways
        self.stats.rtt_s += rtt
        self.stats.wire_s += wire
        self.stats.wire_recent.append(wire)
        self.stats.wire_recent_at.append(time.monotonic())
        busy0 = t0 = time.monotonic()
        more = [self.sampler.batch(self.cfg.batch_size)[::-1] for _ in range(self.cfg.feedback.d_steps - 1)] \
            if self.sampler is not None else []  # (masks, reals): D's further steps against these fakes
        scored = self.trainer.score(req.masks, req.reals, fakes, self.cfg.grad_dtype, more)
        if self.cfg.delay > 0:
            time.sleep(self.cfg.delay)
        self.stats.compute_s += time.monotonic() - t0
        self._judge_verdict(fakes, req.masks, scored.losses)
        t0 = time.monotonic()
        feedback = P.make(P.Kind.FEEDBACK, self.cfg.name, run_id=self.run_id, reply_to=msg.msg_id,
                          step=msg.step, meta={"losses": scored.losses, "grad_scale": scored.grad_scale},
                          tensors=scored.tensors())
        if not self.link.send(feedback):
            self.unsent.append((time.monotonic(), feedback))
            log.warning("node %s: feedback for request %d could not leave; retrying for up to %.0f s",
                        self.cfg.name, msg.reply_to, self.cfg.feedback_retry)
        self.stats.codec_s += time.monotonic() - t0
        self.stats.wire_bytes += sum(t.nbytes for t in scored.tensors().values())
        self.stats.batches += 1
        self.stats.last_feedback = time.monotonic()
        self.stats.samples += len(req.masks)
        self.stats.losses = scored.losses
        self._judge_train(fakes, req.masks)  # after the feedback left: the generator does not wait for the judges
        self._adapt_pipeline(wire, time.monotonic() - busy0)
        if self.cfg.samples_dir is not None and self.stats.batches % self.cfg.sample_every == 1:
            self._save_grid(req.masks, req.reals, fakes)

    def _adapt_pipeline(self, wire: float, service: float) -> None:
        """EWMAs of the wire's round trip and of this node's work per batch set the depth (``--pipeline auto``)."""
        a = 0.2
        self._wire_ewma = wire if not self._wire_ewma else (1 - a) * self._wire_ewma + a * wire
        self._service_ewma = service if not self._service_ewma else (1 - a) * self._service_ewma + a * service
        if self.cfg.auto_pipeline:
            depth = pipeline_depth(self._wire_ewma, self._service_ewma, self.cfg.pipeline, self.max_inflight)
            if depth != self.stats.pipeline:
                log.info("node %s: %d requests in flight (the wire's round trip %.3f s, own work %.3f s per batch)",
                         self.cfg.name, depth, self._wire_ewma, self._service_ewma)
            self.stats.pipeline = depth
        self.stats.pipeline_sum += self.stats.pipeline

    def _judge_verdict(self, fakes: np.ndarray, masks: np.ndarray, losses: dict[str, float]) -> None:
        """label_iou of these fakes, to 2 decimals: what leaves the node is a coarse verdict."""
        if self.transfer_iou is not None:
            losses["transfer_iou"], self.transfer_iou = round(self.transfer_iou, 2), None
        if self.judge is None or self.judge.steps < self.cfg.judge_after:
            return
        t0 = time.monotonic()
        losses["label_iou"] = round(self.judge.label_iou(fakes, masks), 2)
        self.stats.judge_s += time.monotonic() - t0

    def _judge_train(self, fakes: np.ndarray, masks: np.ndarray) -> None:
        if self.judge is None or self.judge_sampler is None:
            return
        t0 = time.monotonic()
        for _ in range(self.cfg.judge_steps):  # its own draws: D's stream of pairs is the same with or without it
            self.judge.train_step(*self.judge_sampler.batch(self.cfg.batch_size))
        if self.transfer is not None:  # a few steps per batch: a verdict at once stalled the node for seconds
            verdict = self.transfer.remember(fakes, masks)
            if verdict is not None:
                self.transfer_iou = verdict
        self.stats.judge_s += time.monotonic() - t0

    def _save_grid(self, masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray) -> None:
        """Rows of mask | real | synthetic, kept on this node's disk (real images stay local)."""
        from dgan.data.view import write_sample_grid

        assert self.cfg.samples_dir is not None  # the caller checked
        name = f"{self.cfg.name}_batch{self.stats.batches:06d}.png"
        write_sample_grid(masks, reals, fakes, self.cfg.samples_dir / name)

    def _on_error(self, msg: P.Message) -> None:
        code = msg.meta.get("code")
        name = P.ErrorCode(code).name if code in P.ErrorCode._value2member_map_ else str(code)
        self.stats.errors[name] += 1
        log.warning("node %s: error %s: %s", self.cfg.name, name, msg.meta.get("reason"))
        if msg.reply_to in self.outstanding:
            del self.outstanding[msg.reply_to]
        if code == P.ErrorCode.NO_GENERATOR:
            self.welcomed = False  # wait for a WELCOME from the next generator
            self.outstanding.clear()
        self._retry_at = time.monotonic() + 0.5

    def _resend_feedback(self) -> None:
        """Retry FEEDBACK that could not leave; after ``feedback_retry`` s it is too stale to help: report it."""
        keep: list[tuple[float, P.Message]] = []
        for first, msg in self.unsent:
            if time.monotonic() - first > self.cfg.feedback_retry:
                self.stats.errors["feedback_unsent"] += 1
                log.warning("node %s: gave up on the feedback for request %d after %.0f s; the broker never took it",
                            self.cfg.name, msg.reply_to, self.cfg.feedback_retry)
            elif self.link.send(msg):
                self.stats.errors["feedback_resent"] += 1
            else:
                keep.append((first, msg))
        self.unsent = keep

    def _expire_requests(self) -> None:
        now = time.monotonic()
        lost = [k for k, r in self.outstanding.items() if now - r.sent > self.cfg.request_timeout]
        for k in lost:
            del self.outstanding[k]
            self.stats.errors["request_timeout"] += 1
        if lost:
            log.warning("node %s: %d request(s) unanswered for %.0f s; asking again", self.cfg.name, len(lost),
                        self.cfg.request_timeout)
