"""The message log: write, read back, verify; truncation and corruption are reported, not fatal."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from dgan import protocol as P
from dgan.msglog import Direction, LogFormatError, MessageLogWriter, ReadReport, iter_records


def write_log(path: Path, n: int = 5) -> list[list[bytes]]:
    w = MessageLogWriter(path, run_id="r1")
    written = []
    for i in range(n):
        msg = P.make(P.Kind.FAKE_REQUEST, f"node{i % 2}", tensors={"masks": np.full((1, 4, 4), i, np.uint8)})
        frames = [bytes(P.frame_view(f)) for f in P.encode(msg)]
        w.append(Direction.FROM_NODE, msg.sender, frames)
        written.append(frames)
    w.close()
    return written


def write_rotated_log(path: Path, n: int = 12) -> Path:
    """``n`` FAKE_REQUESTs whose masks hold 0..n-1, rotated every 600 bytes."""
    w = MessageLogWriter(path, rotate_bytes=600)
    for i in range(n):
        msg = P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": np.full((1, 8, 8), i, np.uint8)})
        w.append(Direction.FROM_NODE, "n", P.encode(msg))
    w.close()
    return path


def test_records_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "a.dgl"
    written = write_log(path)
    report = ReadReport()
    records = list(iter_records(path, report))
    assert [r.frames for r in records] == written
    assert [r.peer for r in records] == ["node0", "node1", "node0", "node1", "node0"]
    assert report.records == 5 and report.truncated_at is None and report.corrupt_at is None


def test_truncation_at_every_byte_of_the_last_record_keeps_the_complete_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.dgl"
    write_log(path, 3)
    data = path.read_bytes()
    offsets = [r.offset for r in iter_records(path)]
    last = offsets[-1]
    cut_path = tmp_path / "cut.dgl"
    for cut in range(last, len(data)):
        cut_path.write_bytes(data[:cut])
        report = ReadReport()
        assert len(list(iter_records(cut_path, report))) == 2
        # cut exactly at the record boundary: a clean end; inside the record: a reported tail
        assert report.truncated_at == (None if cut == last else last)
        assert report.corrupt_at is None
    rng = random.Random(0)
    for cut in rng.sample(range(offsets[0], len(data)), 20):
        cut_path.write_bytes(data[:cut])
        expected = sum(1 for o in [*offsets[1:], len(data)] if o <= cut)
        assert len(list(iter_records(cut_path, ReadReport()))) == expected


def test_a_flipped_byte_is_reported_with_its_record_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.dgl"
    write_log(path, 4)
    offsets = [r.offset for r in iter_records(path)]
    data = bytearray(path.read_bytes())
    data[offsets[2] + 20] ^= 0xFF  # inside the body of record 2
    path.write_bytes(bytes(data))
    report = ReadReport()
    assert len(list(iter_records(path, report))) == 2
    assert report.corrupt_at == offsets[2] and "CRC" in report.error


def test_not_a_log_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.dgl"
    path.write_bytes(b"hello world, not a log")
    with pytest.raises(LogFormatError, match="not a dgan message log"):
        list(iter_records(path))
    with pytest.raises(LogFormatError, match="not a dgan message log"):
        MessageLogWriter(path)


def test_appending_to_an_existing_log_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "a.dgl"
    write_log(path, 2)
    write_log(path, 3)
    assert len(list(iter_records(path))) == 5


def test_rotation_by_size_splits_into_readable_segments(tmp_path: Path) -> None:
    from dgan.msglog import segments

    path = write_rotated_log(tmp_path / "r.dgl")
    files = segments(path)
    assert len(files) > 2 and files[-1] == path
    values = [int(P.decode(r.frames).tensors["masks"][0, 0, 0]) for f in files for r in iter_records(f)]
    assert values == list(range(12))  # every record, in order, across the segments


def test_replay_reads_a_rotated_log_through_every_segment(tmp_path: Path) -> None:
    from dgan import replay as R
    from dgan.msglog import iter_log, segments

    path = write_rotated_log(tmp_path / "r.dgl")
    assert len(segments(path)) > 2
    assert [int(P.decode(r.frames).tensors["masks"][0, 0, 0]) for r in iter_log(path)] == list(range(12))
    assert R.summarize(path).report.records == 12
    assert sum(1 for _ in R.decoded(path)) == 12  # what summary, audit, rebuild and attacks read


def test_message_ids_carry_this_process_start_epoch() -> None:
    a, b = P.next_id(), P.next_id()
    assert b == a + 1 and P.epoch_of(a) == P.EPOCH >= 1 and a < 2**62


def test_a_restarted_writer_after_a_crash_starts_a_segment_and_readers_go_on_past_the_partial_tail(
        tmp_path: Path) -> None:
    from dgan.msglog import iter_log, segments

    path = tmp_path / "b.dgl"
    write_log(path, 3)
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")  # a kill -9 mid-record
    w = MessageLogWriter(path, new_segment=True)
    msg = P.make(P.Kind.FAKE_REQUEST, "n", tensors={"masks": np.full((1, 4, 4), 9, np.uint8)})
    w.append(Direction.FROM_NODE, "n", P.encode(msg))
    w.close()
    assert len(segments(path)) == 2
    report = ReadReport()
    records = list(iter_log(path, report))
    assert len(records) == 4 and report.truncated_at is None and report.corrupt_at is None
    assert len(report.gaps) == 1 and "b.dgl.0001" in report.gaps[0]
