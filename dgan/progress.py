"""Progress lines for the trainings that run with no live panel (the experiment's GANs).

An experiment trains each GAN for 6-15 minutes on two cores; without these lines its log said nothing between
"800 batches" and the first segmenter, so a stalled DGAN, a node gone, or a judge that says the fakes stopped
matching their masks (issue 13's kept-aside split) went unseen until the end. One line a minute, by default.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("dgan.experiment")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressLog:
    """Logs ``label: step s/total (p%), r steps/s, about T left`` at most once per ``every`` seconds. The rate
    counts from the first step made, so start-up (loading, the nodes' warm-up) does not skew the estimate."""

    def __init__(self, label: str, total: int, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log) -> None:
        self.label, self.total, self.every = label, total, every
        self.clock, self.logger = clock, logger
        self._first: tuple[float, int] | None = None  # (time, step) of the first update
        self._last_line = clock()
        self.lines = 0

    def update(self, step: int, detail: str = "") -> bool:
        """Note ``step`` (steps done so far); True when a line was logged."""
        now = self.clock()
        if self._first is None and step > 0:
            self._first = (now, step)
        if now - self._last_line < self.every:
            return False
        self._last_line = now
        t0, s0 = self._first or (now, step)
        rate = (step - s0) / (now - t0) if now > t0 else 0.0
        left = f", about {_duration((self.total - step) / rate)} left" if rate > 0 and step < self.total else ""
        share = 100 * step / self.total if self.total else 100.0
        self.logger.info("%s: step %d/%d (%.0f%%), %.2f steps/s%s%s", self.label, step, self.total, share, rate,
                         left, f"; {detail}" if detail else "")
        self.lines += 1
        return True

    def finish(self, step: int) -> None:
        """The closing line, whenever the last minute ended: the steps made and the whole training's rate."""
        t0, s0 = self._first or (self.clock(), step)
        took = self.clock() - t0
        rate = f", {(step - s0) / took:.2f} steps/s" if took > 0 else ""
        self.logger.info("%s: finished, step %d/%d%s", self.label, step, self.total, rate)
        self.lines += 1

    def silent(self, seconds: float, why: str) -> None:
        """A line, at the same pace, for a wait with no step to report (a DGAN whose generator sends nothing)."""
        now = self.clock()
        if now - self._last_line >= self.every:
            self._last_line = now
            self.logger.warning("%s: %s for %s", self.label, why, _duration(seconds))
            self.lines += 1


class StatusSource(Protocol):
    """What :class:`DGANProgress` reads: the latest generator status (``dgan.live.StatusSubscriber``)."""

    generator: dict[str, Any]

    def poll(self, timeout: float = 0.0) -> bool: ...

    def close(self) -> None: ...


def dgan_detail(status: dict[str, Any]) -> str:
    """The nodes alive, their mean staleness and, where the nodes judge the fakes, the mean label IoU. The counts
    come from the generator's totals: its node list is capped (``STATUS_NODES``)."""
    nodes = status.get("nodes", {})
    if not isinstance(nodes, dict):
        return ""
    alive = [n for n in nodes.values() if isinstance(n, dict) and n.get("alive")]
    n_alive, n_total = status.get("nodes_alive"), status.get("nodes_total")
    if not (isinstance(n_alive, int) and isinstance(n_total, int)):
        n_alive, n_total = len(alive), len(nodes)
    parts = [f"{n_alive}/{n_total} nodes alive"]
    stale = [float(n["staleness"]) for n in alive if isinstance(n.get("staleness"), int | float)]
    if stale:
        parts.append(f"mean staleness {statistics.fmean(stale):.1f}")
    if isinstance(status.get("label_iou"), int | float):
        parts.append(f"judges' label IoU {status['label_iou']:.3f}")
    if status.get("dropped_stale"):
        parts.append(f"{status['dropped_stale']} dropped stale")
    if status.get("discounted_stale"):
        parts.append(f"{status['discounted_stale']} applied discounted")
    return ", ".join(parts)


class DGANProgress:
    """``run_local``'s ``watch``: reads the generator's status broadcasts and logs a :class:`ProgressLog` line,
    or a warning while the generator has said nothing for a minute (it is busy or gone, and the run's own
    timeout will end it). The broker's own broadcasts do not count as the generator's. Whatever goes wrong in
    here is logged once and ends the watching, never the training."""

    def __init__(self, label: str, total: int, every: float = 60.0,
                 subscribe: Callable[[str], StatusSource] | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log) -> None:
        self.progress = ProgressLog(label, total, every, clock, logger)
        self.clock = clock
        self._subscribe = subscribe
        self.source: StatusSource | None = None
        self._heard = clock()
        self._last: dict[str, Any] | None = None  # the generator status last read (the subscriber replaces it)
        self.failed = False

    def watch(self, endpoint: str) -> None:
        if self.failed:
            return
        try:
            self._watch(endpoint)
        except Exception as exc:  # a progress line is never worth a GAN training
            self.failed = True
            self.progress.logger.warning("%s: progress lines stop (%s: %s); the training goes on",
                                         self.progress.label, type(exc).__name__, exc)
            self.close()

    def _watch(self, endpoint: str) -> None:
        if self.source is None:
            if self._subscribe is None:
                from dgan.live import StatusSubscriber

                self._subscribe = StatusSubscriber
            self.source = self._subscribe(endpoint)
        self.source.poll(0.0)
        status = self.source.generator
        if status and status is not self._last:  # news from the generator itself
            self._last = status
            self._heard = self.clock()
            step = status.get("step")
            if isinstance(step, int):
                self.progress.update(step, dgan_detail(status))
            return
        quiet = self.clock() - self._heard
        if quiet >= self.progress.every:
            self.progress.silent(quiet, "no status from the generator")

    def finish(self, steps: object = None) -> None:
        """The closing line: ``steps`` made, as the run's summary counts them, else the generator's last status
        (sent before its last step or two)."""
        if isinstance(steps, int):
            self.progress.finish(steps)
        elif self._last is not None and isinstance(self._last.get("step"), int):
            self.progress.finish(self._last["step"])

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
