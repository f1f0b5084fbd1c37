"""What a generator run reports: STATUS, and on disk checkpoints, sample grids, run.json, the synthetic set.

A mixin of :class:`nodes.generator_service.GeneratorService`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dgan import protocol as P
from dgan.rowstream import RowStream
from dgan.training.generator import GeneratorTrainer
from nodes.label_watch import LabelWatch, Signal

log = logging.getLogger("dgan.generator")

LOSS_COLUMNS = ["d_real", "d_fake", "g_adv", "g_l1"]
# the judges' verdicts last: rows written before they existed keep the same indices (applied_rows reads 9)
FEEDBACK_COLUMNS = ["time", "node", "step", "staleness", "samples", *LOSS_COLUMNS, "request", "label_iou",
                    "transfer_iou"]
STATUS_NODES = 64  # STATUS lists the alive nodes and the most recently seen others, up to this many


class RunOutputs:
    """Needs the attributes :class:`~nodes.generator_service.GeneratorService` sets up."""

    trainer: GeneratorTrainer
    cfg: Any
    out: Path
    nodes: dict[str, Any]
    counters: Counter[str]
    sample_masks: np.ndarray | None
    history: RowStream
    feedback_log: RowStream
    started: float
    run_id: str
    link: Any
    _start_step: int
    label_watch: LabelWatch
    transfer_watch: LabelWatch
    synthesis_weights_used: str | None = None  # set when the final set is synthesised

    def _broadcast_status(self, status: dict[str, Any]) -> None:
        self.link.broadcast(P.make(P.Kind.STATUS, "generator", run_id=self.run_id, step=self.trainer.step,
                                   meta=status))
        if self.cfg.on_status is not None:
            self.cfg.on_status(status)

    def status(self, updates_per_s: float = 0.0, phase: str = "training", done: int = 0,
               total: int = 0) -> dict[str, Any]:
        return {
            "step": self.trainer.step, "steps": self.trainer.cfg.steps, "updates_per_s": round(updates_per_s, 3),
            "samples_applied": self.trainer.samples_applied, "inflight": len(self.trainer.inflight),
            "mode": self.trainer.cfg.mode, "dropped_stale": self.counters["dropped_stale"],
            "discounted_stale": self.counters["discounted_stale"],
            "label_iou": self.label_watch.mean,
            "transfer_iou": self.transfer_watch.mean,
            "phase": phase, "phase_done": done, "phase_total": total,
            "nodes": {n: {"alive": i.alive, "feedback": i.feedback, "batches": i.feedbacks, "losses": i.losses,
                          "staleness": i.staleness_last, "dropped_stale": i.counts["dropped_stale"],
                          "discounted_stale": i.counts["discounted_stale"],
                          "last_seen": round(time.time() - i.last_seen, 1)} for n, i in self._status_nodes()},
            "nodes_total": len(self.nodes), "nodes_alive": sum(1 for i in self.nodes.values() if i.alive),
        }

    def _status_nodes(self) -> list[tuple[str, Any]]:
        """What STATUS lists: bounded however many nodes the run has seen (alive and most recent first)."""
        ranked = sorted(self.nodes.items(), key=lambda kv: (not kv[1].alive, -kv[1].last_seen))
        return ranked[:STATUS_NODES]

    def record_feedback(self, node: str, losses: dict[str, float], staleness: int, samples: int, request: int) -> None:
        """An applied feedback: its row, its scalars for TensorBoard, and the judges' verdict."""
        step = self.trainer.step
        verdicts = self.record_verdicts(node, losses)
        losses = {k: v for k, v in losses.items() if k not in verdicts or verdicts[k] is not None}
        if self.cfg.tensorboard is not None:
            for k, v in losses.items():
                self.cfg.tensorboard.add_scalar(f"{node}/{k}", v, step)
            self.cfg.tensorboard.add_scalar(f"{node}/staleness", staleness, step)
        self.feedback_log.append([round(time.time() - self.started, 3), node, step, staleness, samples,
                                  *(losses.get(k) for k in LOSS_COLUMNS), request, verdicts["label_iou"],
                                  verdicts["transfer_iou"]])

    def record_verdicts(self, node: str, losses: dict[str, float]) -> dict[str, float | None]:
        """The judges' scalars into their watches; also from a feedback dropped as stale (a transfer verdict
        delays the feedback that carries it, so under load it is the one most likely to arrive late)."""
        step = self.trainer.step
        verdicts: dict[str, float | None] = {}
        for key in ("label_iou", "transfer_iou"):
            value = losses.get(key)
            verdicts[key] = value if value is not None and 0.0 <= value <= 1.0 else None  # NaN fails too
        label = verdicts["label_iou"]
        if label is not None and self.label_watch.add(node, label, step) == Signal.DEGRADED:
            w = self.label_watch
            log.warning("generator: the nodes' label IoU on the fakes fell to %.3f at step %d (best %.3f at step "
                        "%d): the generator is drawing the masks worse", w.mean, step, w.best, w.best_step)
        transfer = verdicts["transfer_iou"]
        signal = self.transfer_watch.add(node, transfer, step) if transfer is not None else Signal.NONE
        if signal == Signal.NEW_BEST and self.cfg.synthesis_weights == "judged":
            # The final set comes from here. transfer_iou, not label_iou: over 18 default-budget trainings its
            # best window ranked the sets' quality +0.36 (its last +0.73), label_iou's -0.69 (judges.md).
            self.trainer.keep_judged(self.transfer_watch.best)
        elif signal == Signal.DEGRADED:
            w = self.transfer_watch
            log.warning("generator: a segmenter trained on the fakes now scores IoU %.3f on the nodes' real "
                        "images at step %d (best %.3f at step %d): the fakes are drifting away from real images",
                        w.mean, step, w.best, w.best_step)
        return verdicts

    def checkpoint(self) -> Path:
        """latest.pt first: once ckpt_N exists, --resume finds step N even if the process dies right after."""
        path = self.out / "checkpoints" / f"ckpt_{self.trainer.step:06d}.pt"
        self.feedback_log.flush()  # rows up to a checkpoint survive a kill -9 as the checkpoint does
        self.history.flush()
        self.trainer.watch_bests = {w.name: [w.best, w.best_step] for w in (self.label_watch, self.transfer_watch)
                                    if w.best is not None and w.best_step is not None}
        self.trainer.save(self.out / "checkpoints" / "latest.pt")
        self.trainer.save(path)
        return path

    def save_samples(self) -> Path | None:
        if self.sample_masks is None:
            return None
        fakes = self.trainer.synthesize(self.sample_masks, seed=0, weights="ema")  # G now (or its EMA): no mix
        from dgan.data.view import mask_rgb

        masks = mask_rgb(self.sample_masks, palette=self.trainer.model_cfg.num_classes != 2)
        grid = np.concatenate([np.concatenate([m, f], axis=1) for m, f in zip(masks, fakes, strict=True)], axis=0)
        path = self.out / "samples" / f"step_{self.trainer.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        if self.cfg.tensorboard is not None:
            self.cfg.tensorboard.add_image("samples/mask_synthetic", grid, self.trainer.step, dataformats="HWC")
        return path

    def finish(self) -> dict[str, Any]:
        for name, node in self.nodes.items():
            if node.alive:
                self.link.send(name, P.make(P.Kind.GOODBYE, "generator", run_id=self.run_id,
                                            meta={"reason": "run complete"}))
        self.link.broadcast(P.make(P.Kind.GOODBYE, "generator", run_id=self.run_id, meta={"reason": "run complete"}))
        self.checkpoint()
        self.save_samples()
        synthetic = self.synthesize() if self.cfg.synthesize else 0
        wall = time.time() - self.started
        summary = {
            "run_id": self.run_id, "steps": self.trainer.step, "wall_s": round(wall, 2),
            "updates_per_s": round((self.trainer.step - self._start_step) / wall, 3) if wall else 0.0,
            "samples_applied": self.trainer.samples_applied,
            "samples_per_s": round(self.trainer.samples_applied / wall, 2) if wall else 0.0,
            "synthetic_images": synthetic, "counters": dict(self.counters), **self.label_watch.to_dict(),
            **self.transfer_watch.to_dict(),
            "synthesis_weights": self.synthesis_weights_used,
            "judged_step": self.trainer.judged[0] if self.trainer.judged else None,
            "model": self.trainer.model_cfg.to_dict(), "train": self.trainer.cfg.to_dict(),
            "nodes": {n: {"dataset_size": i.dataset_size, "feedback": i.feedback, "feedbacks": i.feedbacks,
                          "samples": i.samples,
                          "alive_at_end": i.alive, "losses": i.losses, "counts": dict(i.counts),
                          "masks": 0 if i.masks is None else len(i.masks),
                          "staleness_mean": (sum(k * v for k, v in i.staleness.items()) / i.staleness.total()
                                             if i.staleness else None),
                          "staleness_hist": {str(k): v for k, v in sorted(i.staleness.items())},
                          "staleness_max": max(i.staleness) if i.staleness else None}
                      for n, i in self.nodes.items()},
        }
        (self.out / "run.json").write_text(json.dumps(summary, indent=2))
        self.history.write_document(self.out / "history.json")
        self.feedback_log.write_document(self.out / "feedback.json", {"columns": FEEDBACK_COLUMNS})
        self.history.close()
        self.feedback_log.close()
        log.info("generator: done at step %d in %.1f s; %d synthetic images", self.trainer.step, wall, synthetic)
        return summary

    def synthesize(self) -> int:
        root = self.out / "synthetic"
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        rows = []
        t0 = time.monotonic()
        used = self.trainer.weights_available(self.cfg.synthesis_weights)
        if used != self.cfg.synthesis_weights and self.cfg.synthesis_weights != "auto":
            log.warning("generator: no %s weights to synthesise from (no judge reported, --ema off, or fewer than "
                        "two snapshots); using %s", self.cfg.synthesis_weights, used)
        self.synthesis_weights_used = used
        total = sum(len(n.masks) for n in self.nodes.values() if n.masks is not None)
        for name, node in self.nodes.items():
            if node.masks is None:
                continue
            self._broadcast_status(self.status(phase="synthesis", done=len(rows), total=total))
            images = self.trainer.synthesize(node.masks, weights=used)
            for i, (im, m) in enumerate(zip(images, node.masks, strict=True)):
                stem = f"{P.file_stem(name)}_{i:05d}"
                Image.fromarray(im).save(root / "images" / f"{stem}.png")
                Image.fromarray((m > 0).astype(np.uint8) * 255 if self.trainer.model_cfg.num_classes == 2 else m
                                ).save(root / "masks" / f"{stem}.png")
                rows.append((stem, name))
        self._broadcast_status(self.status(phase="synthesis", done=len(rows), total=total))
        with open(root / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "node"])
            w.writerows(rows)
        classes = self.trainer.model_cfg.num_classes
        if classes > 2:  # mask values are class ids: say so, or readers would take them as binary
            (root / "classes.json").write_text(json.dumps({"classes": ["background", *(
                f"class{c}" for c in range(1, classes))]}) + "\n")
        log.info("generator: synthesised %d images in %.1f s", len(rows), time.monotonic() - t0)
        return len(rows)
