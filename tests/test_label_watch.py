"""The generator's degradation alarm on the nodes' label_iou, case by case."""

from __future__ import annotations

import pytest

from nodes.label_watch import LabelWatch, Signal


def test_a_fall_below_the_share_of_the_best_is_said_once_and_rearms_after_recovery() -> None:
    w = LabelWatch(window=2, drop=0.5, patience=1, floor=0.05)
    assert w.add("a", 0.2, 1) == Signal.NONE  # the window is not full yet
    assert w.add("a", 0.4, 2) == Signal.NEW_BEST and w.best == pytest.approx(0.3) and w.best_step == 2
    assert w.add("a", 0.5, 3) == Signal.NEW_BEST  # 0.45
    assert w.add("a", 0.3, 4) == Signal.NONE  # 0.40: lower, but above half the best
    assert w.add("a", 0.0, 5) == Signal.DEGRADED  # 0.15 < 0.225
    assert w.add("a", 0.0, 6) == Signal.NONE and w.degraded  # said once
    assert w.add("a", 0.4, 7) == Signal.NONE and w.add("a", 0.4, 8) == Signal.NONE and not w.degraded  # recovered
    assert w.add("a", 0.0, 9) == Signal.DEGRADED and w.alarms == 2  # (0.4 + 0) / 2 < 0.225


def test_no_alarm_before_the_judges_have_learned_anything() -> None:
    w = LabelWatch(window=1, drop=0.5, floor=0.05, patience=1)
    w.add("a", 0.04, 1)
    assert w.add("a", 0.0, 2) == Signal.NONE and w.alarms == 0  # a best of 0.04 is no baseline
    with pytest.raises(ValueError):
        LabelWatch(window=0)
    with pytest.raises(ValueError):
        LabelWatch(patience=0)


def test_a_fall_must_last_patience_verdicts_to_raise_the_alarm() -> None:
    w = LabelWatch(window=1, drop=0.5, patience=3, floor=0.05)
    w.add("a", 0.4, 1)
    assert [w.add("a", v, 2) for v in (0.1, 0.1, 0.5)] == [Signal.NONE, Signal.NONE, Signal.NEW_BEST]  # a dip
    assert [w.add("a", 0.1, 3) for _ in range(3)] == [Signal.NONE, Signal.NONE, Signal.DEGRADED]  # a trend


def test_the_verdict_is_the_median_of_nodes_so_one_fast_or_hostile_node_cannot_set_it() -> None:
    w = LabelWatch(window=2, drop=0.5, patience=1, floor=0.05)
    for v in (0.3, 0.3):
        w.add("b", v, 1)
        w.add("c", v, 1)
    for step in range(10):  # a fast node answers five times as often, always 1.0
        assert w.add("liar", 1.0, 2 + step) == Signal.NONE
    assert w.mean == pytest.approx(0.3) and w.best == pytest.approx(0.3)  # median of 0.3, 0.3, 1.0
    for v in (0.0, 0.0):
        w.add("b", v, 12)
        w.add("c", v, 12)
    assert w.mean == pytest.approx(0.0) and w.alarms == 1  # the liar cannot hide the fall
    w.forget("b")
    assert w.mean == pytest.approx(0.5)  # a node that left no longer counts
