"""Hostile input at live processes, and nodes killed at random mid-training."""

from __future__ import annotations

from pathlib import Path

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


def test_chaos_soak_with_broker_and_generator_kills_keeps_the_log_invariants_and_reaches_its_steps() -> None:
    res = run_chaos(minutes=0.4, nodes=3, seed=1, finish_steps=20)
    assert sum(res["kills"].values()) >= 3, res["kills"]
    assert res["invariants_ok"], res["invariants"]
    assert res["invariants"]["answers"] > 0 and res["invariants"]["applied"] > 0
    assert res["reached"] and res["process_crashes"] == 0, res


def test_the_log_invariant_check_catches_a_double_answer_and_a_double_application(tmp_path: Path) -> None:
    import numpy as np

    from dgan import protocol as P
    from dgan.invariants import check_exchanges
    from dgan.msglog import Direction, MessageLogWriter

    w = MessageLogWriter(tmp_path / "x.dgl")
    fakes = P.make(P.Kind.FAKES, "generator", tensors={"fakes": np.zeros((1, 3, 4, 4), np.float16)})
    w.append(Direction.FROM_GENERATOR, "a", P.encode(fakes))
    for who in ("a", "a", "b"):  # answered twice by its node, once by another
        fb = P.make(P.Kind.FEEDBACK, who, reply_to=fakes.msg_id, meta={"losses": {}},
                    tensors={"grad": np.zeros((1, 3, 4, 4), np.float16)})
        w.append(Direction.FROM_NODE, who, P.encode(fb))
    w.close()
    clean = check_exchanges(tmp_path / "x.dgl", [("a", fakes.msg_id)])
    assert len(clean.violations) == 2  # answered 3 times; answered by b
    twice = check_exchanges(tmp_path / "x.dgl", [("a", fakes.msg_id), ("a", fakes.msg_id), ("b", fakes.msg_id)])
    assert any("was applied 3 times" in v for v in twice.violations)
    assert any("was applied for 'b'" in v for v in twice.violations)
