"""The exchange invariants, checked from what was recorded rather than from counters that could lie.

From the broker's message log and the generator's applied-feedback rows:

* every FAKES is answered at most once,
* only by the node it was sent to,
* and each answer is applied at most once, for that node.

A FEEDBACK whose FAKES is not in the log (a broker killed with records still
queued) is counted as a log gap, not a violation: the log cannot say where
those fakes went.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dgan import protocol as P
from dgan.msglog import Direction, ReadReport
from dgan.rowstream import read_rows


@dataclass
class ExchangeCheck:
    fakes: int = 0
    answers: int = 0  # FEEDBACK the broker took from nodes (refused ones excluded)
    applied: int = 0
    unmatched_answers: int = 0  # answers to FAKES the log does not hold
    violations: list[str] = field(default_factory=list)
    log_gaps: list[str] = field(default_factory=list)  # segment tails torn by a broker kill

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, object]:
        return {"fakes": self.fakes, "answers": self.answers, "applied": self.applied,
                "unmatched_answers": self.unmatched_answers, "log_gaps": self.log_gaps,
                "violations": self.violations[:20],
                "violation_count": len(self.violations), "ok": self.ok}


def applied_rows(path: Path) -> Iterator[tuple[str, int]]:
    """(node, FAKES id) of each applied feedback, from the generator's ``feedback.jsonl``.

    A row torn by a kill -9 is skipped: that feedback's application died with the process."""
    for row in read_rows(path):
        if isinstance(row, list) and len(row) >= 10 and isinstance(row[9], int):
            yield str(row[1]), row[9]


def check_exchanges(log: Path, applied: Iterable[tuple[str, int]] = ()) -> ExchangeCheck:
    from dgan.replay import decoded

    res = ExchangeCheck()
    fakes_to: dict[int, str] = {}
    feedbacks: list[tuple[str, int, int]] = []  # (node, feedback id, FAKES id)
    refused: set[int] = set()  # ids the broker answered with an ERROR instead of delivering
    report = ReadReport()
    for _, rec, msg in decoded(log, report):
        if msg is None:
            continue
        if rec.direction == Direction.FROM_GENERATOR and msg.kind == P.Kind.FAKES:
            fakes_to[msg.msg_id] = rec.peer
        elif rec.direction == Direction.FROM_NODE and msg.kind == P.Kind.FEEDBACK:
            feedbacks.append((rec.peer, msg.msg_id, msg.reply_to))
        elif rec.direction == Direction.TO_NODE and msg.kind == P.Kind.ERROR and msg.reply_to:
            refused.add(msg.reply_to)
    res.fakes = len(fakes_to)
    res.log_gaps = list(report.gaps) + ([f"last segment: {report.error}"] if report.truncated_at is not None else [])
    if report.corrupt_at is not None:
        res.violations.append(f"the log is corrupt ({report.error}): the check is incomplete")
    answered: Counter[int] = Counter()
    for node, fid, fakes_id in feedbacks:
        if fid in refused:
            continue
        res.answers += 1
        answered[fakes_id] += 1
        dest = fakes_to.get(fakes_id)
        if dest is None:
            res.unmatched_answers += 1
        elif dest != node:
            res.violations.append(f"FAKES {fakes_id} went to {dest!r} but {node!r} answered it")
    res.violations += [f"FAKES {k} was answered {n} times" for k, n in answered.items() if n > 1]
    used: Counter[int] = Counter()
    for node, fakes_id in applied:
        res.applied += 1
        used[fakes_id] += 1
        dest = fakes_to.get(fakes_id)
        if dest is not None and dest != node:
            res.violations.append(f"an answer to FAKES {fakes_id} (sent to {dest!r}) was applied for {node!r}")
    res.violations += [f"the answer to FAKES {k} was applied {n} times" for k, n in used.items() if n > 1]
    return res
