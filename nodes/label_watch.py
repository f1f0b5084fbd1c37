"""Is the generator getting worse? The nodes' label_iou over a sliding window, as pure logic.

Each node's judge reports how well a segmenter trained on its real pairs finds
the masks' buildings in the fakes (``label_iou``).  The window mean over all
nodes rises while the generator learns to draw what the masks say; a fall to a
fraction of its best is the degradation that, without this, nobody sees until
the segmentation experiment ends (issue 13's grey, low-contrast fakes).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class Signal(enum.Enum):
    NONE = "none"
    NEW_BEST = "new_best"  # the window mean is the best so far
    DEGRADED = "degraded"  # it fell below ``drop`` x the best (said once, until it recovers)


@dataclass
class LabelWatch:
    window: int = 32  # feedbacks per mean
    drop: float = 0.6  # DEGRADED below this share of the best window mean
    floor: float = 0.05  # a best below this is no baseline yet (the judges are still learning)
    values: deque[float] = field(default_factory=deque)
    best: float | None = None
    best_step: int | None = None
    degraded: bool = False
    alarms: int = 0

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 < self.drop < 1:
            raise ValueError("window must be >= 1 and drop between 0 and 1")

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if len(self.values) == self.window else None

    def add(self, value: float, step: int) -> Signal:
        self.values.append(value)
        if len(self.values) > self.window:
            self.values.popleft()
        mean = self.mean
        if mean is None:
            return Signal.NONE
        if self.best is None or mean > self.best:
            self.best, self.best_step, self.degraded = mean, step, False
            return Signal.NEW_BEST
        if self.best >= self.floor and mean < self.drop * self.best:
            if not self.degraded:
                self.degraded = True
                self.alarms += 1
                return Signal.DEGRADED
        elif mean >= self.drop * self.best:
            self.degraded = False
        return Signal.NONE

    def to_dict(self) -> dict[str, float | int | None]:
        return {"label_iou_window": self.mean, "label_iou_best": self.best, "label_iou_best_step": self.best_step,
                "degraded_alarms": self.alarms}
