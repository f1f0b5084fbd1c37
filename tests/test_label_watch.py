"""The generator's degradation alarm on the nodes' label_iou, case by case."""

from __future__ import annotations

import pytest

from nodes.label_watch import LabelWatch, Signal


def test_a_fall_below_the_share_of_the_best_is_said_once_and_rearms_after_recovery() -> None:
    w = LabelWatch(window=2, drop=0.5)
    assert w.add(0.2, 1) == Signal.NONE  # the window is not full yet
    assert w.add(0.4, 2) == Signal.NEW_BEST and w.best == pytest.approx(0.3) and w.best_step == 2
    assert w.add(0.5, 3) == Signal.NEW_BEST  # 0.45
    assert w.add(0.3, 4) == Signal.NONE  # 0.40: lower, but above half the best
    assert w.add(0.0, 5) == Signal.DEGRADED  # 0.15 < 0.225
    assert w.add(0.0, 6) == Signal.NONE and w.degraded  # said once
    assert w.add(0.4, 7) == Signal.NONE and w.add(0.4, 8) == Signal.NONE and not w.degraded  # recovered
    assert w.add(0.0, 9) == Signal.DEGRADED and w.alarms == 2  # (0.4 + 0) / 2 < 0.225


def test_no_alarm_before_the_judges_have_learned_anything() -> None:
    w = LabelWatch(window=1, drop=0.5, floor=0.05)
    w.add(0.04, 1)
    assert w.add(0.0, 2) == Signal.NONE and w.alarms == 0  # a best of 0.04 is no baseline
    with pytest.raises(ValueError):
        LabelWatch(window=0)
