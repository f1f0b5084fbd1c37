"""The generator process: serves fake requests as they come, applies feedback, ends the run.

It only sees a :class:`~dgan.transport.base.GeneratorLink`, so the same code
runs over ZeroMQ through the broker or in-process in tests.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgan import protocol as P
from dgan.feedback import FeedbackMode
from dgan.rowstream import RowStream
from dgan.training.generator import GeneratorTrainer, Outcome
from dgan.training.staleness import DISCOUNT_CAP
from dgan.transport.base import GeneratorLink, LinkClosed
from nodes.label_watch import LabelWatch
from nodes.mask_upload import MaskUpload
from nodes.round_policy import Action, RoundPolicy
from nodes.run_outputs import RunOutputs

log = logging.getLogger("dgan.generator")

FEEDBACK_NAMES = frozenset({m.value for m in FeedbackMode} | {"unknown"})  # "unknown": a node that predates modes


@dataclass
class ServiceConfig:
    out: Path
    run_id: str = "run"
    checkpoint_every: int = 100
    sample_every: int = 50
    status_interval: float = 1.0
    synthesize: bool = True
    synthesis_weights: str = "auto"  # the final set from: auto (snapshots, else EMA, when kept), raw, ema, snapshots,
    # judged (nodes' best)
    max_bad_messages: int = 50
    round_timeout: float = 300.0  # sync: a member silent this long after its fakes leaves the round
    max_mask_bytes: int = 256 * 1024 * 1024  # one node's uploaded masks, all chunks together (bounded memory)
    idle_timeout: float = 0.0  # > 0: end the run when no node has been seen for this long
    tensorboard: Any = None  # a torch.utils.tensorboard SummaryWriter, or None
    on_status: Any = None  # called with each status dict (the generator's own live panel)


@dataclass
class NodeInfo:
    name: str
    dataset_size: int = 0
    feedback: str = "unknown"  # the mode the node announced at HELLO (the node enforces it)
    alive: bool = True
    joined: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    feedbacks: int = 0
    samples: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    staleness: Counter[int] = field(default_factory=Counter)  # a histogram: bounded, however long the run
    staleness_last: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    upload: MaskUpload | None = None  # masks arriving in chunks
    masks: np.ndarray | None = None


class GeneratorService(RunOutputs):
    def __init__(self, link: GeneratorLink, trainer: GeneratorTrainer, cfg: ServiceConfig) -> None:
        self.link, self.trainer, self.cfg = link, trainer, cfg
        self.nodes: dict[str, NodeInfo] = {}
        self.counters: Counter[str] = Counter()
        self.sample_masks: np.ndarray | None = None
        self.out = Path(cfg.out)
        resumed = trainer.step > 0
        self.history = RowStream(self.out / "history.jsonl", append=resumed)  # one row per status interval
        self.feedback_log = RowStream(self.out / "feedback.jsonl", append=resumed)  # one row per applied feedback
        self._warned_stale: set[str] = set()  # nodes already warned of as shut out by the staleness bound
        self.policy = RoundPolicy(trainer.cfg.mode, trainer.cfg.update_every,  # who is served when; when G steps
                                  max_staleness=trainer.cfg.max_staleness)
        self.label_watch = LabelWatch()  # the nodes' judges: is G drawing what the masks say, better or worse?
        # ... and would a segmenter made from its fakes work on real images? One verdict per node per 16 batches.
        self.transfer_watch = LabelWatch(name="transfer_iou", window=2, patience=2, drop=0.5, floor=0.05)
        for watch in (self.label_watch, self.transfer_watch):  # resumed: the bests to beat
            if watch.name in trainer.watch_bests:
                watch.best, step = trainer.watch_bests[watch.name]
                watch.best_step = int(step)
        self.started = time.time()
        self._last_status = 0.0
        self._last_log = time.monotonic()
        self._steps_at_status = trainer.step
        self._start_step = trainer.step
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.run_id = cfg.run_id
        self.stop_requested = False

    # ------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        steps = self.trainer.cfg.steps
        log.info("generator: run %s, %s mode, from step %d to %d", self.run_id, self.trainer.cfg.mode,
                 self.trainer.step, steps)
        if self.trainer.step == 0:
            self.trainer.save(self.out / "checkpoints" / "ckpt_000000.pt")
        last_seen_any = time.monotonic()
        while self.trainer.step < steps and not self.stop_requested:
            try:
                got = self.link.recv(0.2)
            except LinkClosed:  # nothing more can arrive: end as a finished run would (checkpoint, run.json)
                log.exception("generator: the link to the broker failed; ending the run at step %d",
                              self.trainer.step)
                break
            if got is not None:
                last_seen_any = time.monotonic()
                route, msg = got
                try:
                    self.handle(route, msg)
                except Exception:  # never let one message end the run
                    self.counters["internal_errors"] += 1
                    log.exception("generator: error handling %s from %s", msg.kind.name, route)
            elif self.cfg.idle_timeout and time.monotonic() - last_seen_any > self.cfg.idle_timeout:
                log.warning("generator: no node for %.0f s; ending the run early", self.cfg.idle_timeout)
                break
            self._periodic()
        return self.finish()

    def request_stop(self, synthesize: bool = True) -> None:
        """End the run at the next message boundary (SIGTERM): checkpoint and summary as usual; the synthetic set
        too unless ``synthesize`` is False (nobody is left to wait minutes for it)."""
        self.stop_requested = True
        if not synthesize:
            self.cfg.synthesize = False

    def _periodic(self) -> None:
        now = time.monotonic()
        for name in self.policy.overdue(now, self.cfg.round_timeout):
            released = self.trainer.release(name)
            self.counters["round_timeouts"] += 1
            log.warning("generator: node %s has not answered this round's fakes for %.0f s; it leaves the round "
                        "(%d request(s) released)", name, self.cfg.round_timeout, released)
            self._leave_round(name)
        if now - self._last_status >= self.cfg.status_interval:
            dt = now - self._last_status if self._last_status else 0.0
            rate = (self.trainer.step - self._steps_at_status) / dt if dt else 0.0
            status = self.status(rate)
            self.history.append({"time": time.time() - self.started, **{k: status[k] for k in (
                "step", "updates_per_s", "samples_applied")}, "nodes": {
                n: {"losses": i.losses, "staleness": i.staleness_last}
                for n, i in self.nodes.items()}})
            self._broadcast_status(status)
            self._last_status, self._steps_at_status = now, self.trainer.step
            if now - self._last_log >= 10.0:
                self._last_log = now
                alive = sum(1 for i in self.nodes.values() if i.alive)
                log.info("generator: step %d/%d, %.2f updates/s, %d samples applied, %d node(s) alive, "
                         "%d dropped stale", self.trainer.step, self.trainer.cfg.steps, rate,
                         self.trainer.samples_applied, alive, self.counters["dropped_stale"])
                self._warn_shut_out()

    def _warn_shut_out(self) -> None:
        """Once per node: most of its feedbacks arrive too stale to apply, so its department stops counting."""
        for name, i in self.nodes.items():
            dropped = i.counts["dropped_stale"]
            if dropped >= 10 and dropped > i.feedbacks and name not in self._warned_stale:
                self._warned_stale.add(name)
                hint = "--stale-policy discount applies them at a cut weight" if self.trainer.cfg.stale_policy \
                    == "drop" else f"even discounting stops at {DISCOUNT_CAP}x --max-staleness"
                log.warning("generator: node %s: %d of its %d feedbacks were too stale to apply (a slow link?), so "
                            "its data has all but stopped counting; %s", name, dropped, dropped + i.feedbacks, hint)

    # ------------------------------------------------------------ messages

    def handle(self, route: str, msg: P.Message) -> None:
        kind = msg.kind
        if kind == P.Kind.ERROR:
            self._on_error(msg)
            return
        if kind == P.Kind.NODE_LEFT:
            self._node_left(msg.meta["node"], msg.meta["reason"])
            return
        if not route:
            return
        if kind == P.Kind.HELLO:
            self._on_hello(route, msg)
            return
        node = self.nodes.get(route)
        if node is None:
            self._reject(route, msg, P.ErrorCode.NOT_REGISTERED, "say HELLO first")
            return
        node.last_seen = time.time()
        if node.counts["bad"] >= self.cfg.max_bad_messages:
            self.counters["ignored_banned"] += 1
            return
        if kind == P.Kind.MASKS:
            self._on_masks(node, msg)
        elif kind == P.Kind.FAKE_REQUEST:
            self._on_request(node, msg)
        elif kind == P.Kind.FEEDBACK:
            self._on_feedback(node, msg)
        elif kind == P.Kind.GOODBYE:
            self._node_left(route, "said goodbye")
        else:
            self._reject(route, msg, P.ErrorCode.FORBIDDEN, f"the generator does not take {kind.name}")

    def _reject(self, node: str, msg: P.Message, code: P.ErrorCode, reason: str, hostile: bool = True) -> None:
        """ERROR to the node; ``hostile`` messages (invalid content) count towards ignoring it."""
        info = self.nodes.get(node)
        if info is not None and hostile:
            info.counts["bad"] += 1
            if info.counts["bad"] == self.cfg.max_bad_messages:
                reason += f"; {self.cfg.max_bad_messages} bad messages: further messages are ignored"
                log.warning("generator: node %s sent %d bad messages; ignoring it", node, self.cfg.max_bad_messages)
                self._leave_round(node)
        self.counters[f"rejected_{code.name.lower()}"] += 1
        log.warning("generator: rejected %s from %s: %s", msg.kind.name, node, reason)
        self.link.send(node, P.error("generator", code, reason, reply_to=msg.msg_id, run_id=self.run_id))

    def _on_hello(self, name: str, msg: P.Message) -> None:
        size = msg.meta.get("dataset_size", 0)
        if type(size) is not int or size < 0:
            self._reject(name, msg, P.ErrorCode.BAD_HEADER, "HELLO needs meta dataset_size, an integer >= 0")
            return
        feedback = msg.meta.get("feedback", "unknown")
        if type(feedback) is not str or feedback not in FEEDBACK_NAMES:
            self._reject(name, msg, P.ErrorCode.BAD_HEADER, f"HELLO meta feedback must be one of "
                         f"{sorted(FEEDBACK_NAMES)}, got {str(feedback)[:40]!r}")
            return
        old = self.nodes.get(name)
        if old is not None:
            released = self.trainer.release(name)
            log.info("generator: node %s said hello again; released %d request(s) in flight", name, released)
            self._leave_round(name)
            old.alive, old.dataset_size, old.feedback = True, size, feedback
        else:
            self.nodes[name] = NodeInfo(name, dataset_size=size, feedback=feedback)
            log.info("generator: node %s joined (%d pairs, feedback %s)", name, size, feedback)
        node = self.nodes[name]
        config = {"model": self.trainer.model_cfg.to_dict(), "fake_dtype": self.trainer.cfg.fake_dtype,
                  "max_batch": self.trainer.cfg.max_batch, "need_masks": node.masks is None,
                  "max_inflight": self.trainer.cfg.max_inflight_per_node}
        self.link.send(name, P.make(P.Kind.WELCOME, "generator", run_id=self.run_id, step=self.trainer.step,
                                    meta={"config": config}))

    def _node_left(self, name: str, reason: str) -> None:
        node = self.nodes.get(name)
        if node is None or not node.alive:
            return
        node.alive = False
        self.label_watch.forget(name)
        self.transfer_watch.forget(name)
        released = self.trainer.release(name)
        self.counters["node_departures"] += 1
        log.warning("generator: node %s left (%s); released %d request(s) in flight", name, reason, released)
        self._leave_round(name)
        if node.feedbacks == 0 and node.masks is None:
            del self.nodes[name]  # it gave nothing to keep: a stream of passing names never grows this table

    def _on_error(self, msg: P.Message) -> None:
        code = msg.meta.get("code")
        self.counters["errors_received"] += 1
        lost = self.trainer.inflight.get(msg.reply_to)
        if lost is not None and self.trainer.release_key(msg.reply_to):
            # Fakes that never reached their node: it cannot answer them, so it leaves this round.
            self.counters["released_undeliverable"] += 1
            self._leave_round(lost.node)
        log.warning("generator: error from broker: %s %s", code, msg.meta.get("reason"))

    def _check_masks(self, node: NodeInfo, msg: P.Message) -> str:
        masks = msg.tensors["masks"]
        size = self.trainer.model_cfg.image_size
        if masks.shape[1:] != (size, size):
            return f"masks must be {size}x{size}, got {masks.shape[1]}x{masks.shape[2]}"
        if masks.size and int(masks.max()) >= self.trainer.model_cfg.num_classes:
            return f"mask values must be class ids below {self.trainer.model_cfg.num_classes}"
        return ""

    def _on_masks(self, node: NodeInfo, msg: P.Message) -> None:
        problem, whole = self._check_masks(node, msg), None
        if not problem:
            if node.upload is None:
                node.upload = MaskUpload(self.cfg.max_mask_bytes)
            whole, problem = node.upload.add(msg.meta["chunk"], msg.meta["chunks"], msg.tensors["masks"])
        if problem:
            self._reject(node.name, msg, P.ErrorCode.REJECTED, problem)
        elif whole is not None:
            node.masks = whole
            log.info("generator: %d masks from %s", len(node.masks), node.name)
            if self.sample_masks is None:
                self.sample_masks = node.masks[:8].copy()

    def _on_request(self, node: NodeInfo, msg: P.Message) -> None:
        problem = self._check_masks(node, msg)
        if not problem and not 0 < len(msg.tensors["masks"]) <= self.trainer.cfg.max_batch:
            problem = f"a request holds 1 to {self.trainer.cfg.max_batch} masks"
        if problem:
            self._reject(node.name, msg, P.ErrorCode.REJECTED, problem)
            return
        while self.trainer.inflight_for(node.name) >= self.trainer.cfg.max_inflight_per_node:
            # Bounded state per node: a node over its bound has given up on its oldest request.
            self.trainer.evict_oldest(node.name)
            node.counts["evicted_inflight"] += 1
        action = self.policy.request(node.name, msg)
        if action == Action.SERVE:
            self._serve(node, msg)
        elif action == Action.REFUSE:
            self._reject(node.name, msg, P.ErrorCode.BACKPRESSURE, "this round's queue is full; ask again after "
                         "your feedback", hostile=False)

    def _serve(self, node: NodeInfo, msg: P.Message) -> None:
        reply = P.make(P.Kind.FAKES, "generator", run_id=self.run_id, reply_to=msg.msg_id, step=self.trainer.step)
        fakes = self.trainer.generate(node.name, reply.msg_id, msg.tensors["masks"], request_id=msg.msg_id)
        reply.tensors["fakes"] = fakes
        # How long the request was here (queued and computed): the node subtracts it from its round trip, so
        # what remains is the wire and the broker (the honest communication share).
        reply.meta["held_s"] = round(time.monotonic() - msg.received_at, 5) if msg.received_at else 0.0
        self.policy.was_served(node.name, time.monotonic())
        if not self.link.send(node.name, reply):  # never left this process: no answer can come
            self.trainer.release_key(reply.msg_id)
            self.counters["fakes_unsent"] += 1
            self._leave_round(node.name)
            return
        self.counters["fakes_sent"] += 1

    def _on_feedback(self, node: NodeInfo, msg: P.Message) -> None:
        if msg.run_id != self.run_id or P.epoch_of(msg.reply_to) != P.EPOCH:
            # An answer to fakes made by another run, or by this run before a restart: never this process's.
            node.counts["other_run"] += 1
            self._reject(node.name, msg, P.ErrorCode.REJECTED, f"feedback for run {msg.run_id[:40]!r}, epoch "
                         f"{P.epoch_of(msg.reply_to)}: this generator is run {self.run_id!r}, epoch {P.EPOCH}",
                         hostile=False)
            self._leave_round_if_unanswerable(node.name)
            return
        grad = msg.tensors["grad"]
        scale = msg.meta.get("grad_scale", 1.0)
        if type(scale) not in (int, float):
            scale = float("nan")
        mean = np.mean([n.dataset_size for n in self.nodes.values() if n.alive] or [1]) or 1.0
        weight = node.dataset_size / mean if self.trainer.cfg.weighting == "size" and node.dataset_size else 1.0
        outcome, staleness, reason = self.trainer.apply_feedback(node.name, msg.reply_to, grad, float(scale), weight,
                                                                 msg.tensors.get("grad_scales"))
        if outcome == Outcome.REJECTED or outcome == Outcome.UNKNOWN:
            node.counts[outcome.value] += 1
            # Unknown = released or evicted earlier (a restart, a timeout): benign, not hostile.
            self._reject(node.name, msg, P.ErrorCode.REJECTED, reason, hostile=outcome == Outcome.REJECTED)
            self._leave_round_if_unanswerable(node.name)
            return
        losses = {k: float(v) for k, v in msg.meta.get("losses", {}).items() if type(v) in (int, float)}
        if outcome == Outcome.DROPPED_STALE:
            node.counts["dropped_stale"] += 1
            self.counters["dropped_stale"] += 1
            self.record_verdicts(node.name, losses)  # stale for G, not for the judges
        else:
            if outcome == Outcome.DISCOUNTED:  # applied, at a cut weight: a slow link's node, kept in
                node.counts["discounted_stale"] += 1
                self.counters["discounted_stale"] += 1
            node.feedbacks += 1
            node.samples += int(grad.shape[0])
            node.staleness[staleness] += 1
            node.staleness_last = staleness
            node.losses = losses
            self.record_feedback(node.name, losses, staleness, int(grad.shape[0]), msg.reply_to)
        self.policy.inflight = len(self.trainer.inflight) + 1  # with the request just answered
        if self.policy.feedback(node.name, self.trainer.pending):
            self._step()

    # ------------------------------------------------------------ rounds

    def _leave_round_if_unanswerable(self, name: str) -> None:
        """A refused answer: the node leaves the round only if no fakes of its are still in flight to answer."""
        if self.trainer.inflight_for(name) == 0:
            self._leave_round(name)

    def _leave_round(self, name: str) -> None:
        self.policy.inflight = len(self.trainer.inflight)  # its released requests no longer count
        if self.policy.leave(name, self.trainer.pending):
            self._step()

    def _step(self) -> None:
        """Step G; in sync mode this closes the round, and the requests that waited for it are handled."""
        self._update()
        if self.policy.sync:
            for name, msg in self.policy.next_round():
                node = self.nodes.get(name)
                if node is not None and node.alive:
                    self._on_request(node, msg)

    # ------------------------------------------------------------ steps and end

    def _update(self) -> None:
        if not self.trainer.update():
            return
        step = self.trainer.step
        if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
            self.checkpoint()
        if self.cfg.sample_every and step % self.cfg.sample_every == 0:
            self.save_samples()
