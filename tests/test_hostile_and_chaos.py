"""Hostile input at live processes, and nodes killed at random mid-training."""

from __future__ import annotations

from benchmarks.chaos import run_chaos
from benchmarks.fuzz_broker import run_fuzz


def test_fuzzed_broker_and_generator_answer_every_bad_message_and_keep_training() -> None:
    res = run_fuzz(count=600, seconds=120, memory_bound_mb=400)
    assert res["crashed"] == []
    assert res["missing_errors"] == 0 and res["errors_received"] == res["sent"] >= 600
    assert res["honest_batches_after"] > res["honest_batches_before"]  # valid traffic kept flowing
    assert res["broker_peak_rss_mb"] <= 400
    assert {"random_frames", "lying_descriptor", "huge_declared_size", "wrong_version", "feedback_nan",
            "spoofed_sender", "wrong_mask_size"} <= set(res["by_category"])
    assert res["ok"]


def test_chaos_soak_has_no_duplicate_updates_and_no_crashes() -> None:
    res = run_chaos(minutes=0.3, nodes=3)
    assert res["nodes_killed"] >= 2
    assert res["duplicate_updates"] == 0 and res["process_crashes"] == 0, res
    assert res["updates_applied"] > 0
