"""Is the generator getting worse? The nodes' label_iou over sliding windows, as pure logic.

Each node's judge reports how well a segmenter trained on its real pairs finds
the masks' buildings in the fakes (``label_iou``).  Each node has its own
window, so a fast node does not outweigh the others; the verdict is the median
of the nodes' window means, so one node (hostile, or with a badly calibrated
judge) cannot move it alone once there are three.  It rises while the
generator learns to draw what the masks say; a fall to a fraction of its best
is the degradation that, without this, nobody sees until the segmentation
experiment ends (issue 13's grey, low-contrast fakes).
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from dataclasses import dataclass, field


class Signal(enum.Enum):
    NONE = "none"
    NEW_BEST = "new_best"  # the verdict is the best so far
    DEGRADED = "degraded"  # it fell below ``drop`` x the best (said once, until it recovers)


@dataclass
class LabelWatch:
    """Also watches the nodes' ``transfer_iou`` (``name``): fewer verdicts, so a shorter window and patience."""

    name: str = "label_iou"
    window: int = 16  # feedbacks per node per mean
    drop: float = 0.6  # DEGRADED below this share of the best verdict...
    patience: int = 16  # ...for this many verdicts in a row (one noisy window is no trend)
    floor: float = 0.15  # a best below this is no baseline yet (the judges, or the generator, are still learning)
    values: dict[str, deque[float]] = field(default_factory=dict)
    best: float | None = None
    best_step: int | None = None
    degraded: bool = False
    alarms: int = 0
    low: int = 0  # verdicts in a row below drop x best

    def __post_init__(self) -> None:
        if self.window < 1 or self.patience < 1 or not 0 < self.drop < 1:
            raise ValueError("window and patience must be >= 1 and drop between 0 and 1")

    @property
    def mean(self) -> float | None:
        """The verdict: the median over nodes with a full window of their window means."""
        means = [sum(v) / len(v) for v in self.values.values() if len(v) == self.window]
        return statistics.median(means) if means else None

    def forget(self, node: str) -> None:
        self.values.pop(node, None)

    def add(self, node: str, value: float, step: int) -> Signal:
        window = self.values.setdefault(node, deque(maxlen=self.window))
        window.append(value)
        mean = self.mean
        if mean is None:
            return Signal.NONE
        if self.best is None or mean > self.best:
            self.best, self.best_step, self.degraded, self.low = mean, step, False, 0
            return Signal.NEW_BEST
        if mean >= self.drop * self.best:
            self.degraded, self.low = False, 0
            return Signal.NONE
        self.low += 1
        if self.best >= self.floor and self.low >= self.patience and not self.degraded:
            self.degraded = True
            self.alarms += 1
            return Signal.DEGRADED
        return Signal.NONE

    def to_dict(self) -> dict[str, float | int | None]:
        alarms = "degraded_alarms" if self.name == "label_iou" else f"{self.name}_alarms"  # run.json's old key kept
        return {f"{self.name}_window": self.mean, f"{self.name}_best": self.best,
                f"{self.name}_best_step": self.best_step, alarms: self.alarms}
