"""The message log: an append-only record of every message the broker routes.

File layout (all integers little-endian)::

    b"DGANLOG\\n"  u16 format version  u32 meta length  msgpack meta
    record*     : u32 body length  u32 CRC-32 of body  body
    body        : f64 wall time  f64 monotonic time  u8 direction
                  u16 peer length  peer (utf-8)  u16 frame count
                  (u32 frame length  frame bytes)*

Writing happens on a background thread so the broker's loop only enqueues
frame references (zero-copy); the queue is bounded, so a slow disk slows the
broker instead of losing records.  The reader streams record by record in
constant memory, keeps every complete record before a truncated tail, and
names the byte offset of the first corrupt record.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from dgan.protocol import PROTOCOL_VERSION, frame_view

log = logging.getLogger(__name__)

MAGIC = b"DGANLOG\n"
FORMAT_VERSION = 1
_FILE_HEAD = struct.Struct("<8sHI")
_REC_HEAD = struct.Struct("<II")
_BODY_HEAD = struct.Struct("<ddBH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 31


class Direction(enum.IntEnum):
    FROM_NODE = 1  # node -> broker
    TO_NODE = 2  # broker -> node
    FROM_GENERATOR = 3  # generator -> broker
    TO_GENERATOR = 4  # broker -> generator
    PUBLISHED = 5  # broker -> every subscriber


@dataclass
class Record:
    offset: int
    wall: float
    mono: float
    direction: Direction
    peer: str
    frames: list[bytes]


class LogFormatError(Exception):
    """The file is not a dgan message log, or a record in it is corrupt."""

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: at byte offset {offset}: {reason}")
        self.path = str(path)
        self.offset = offset
        self.reason = reason


class MessageLogWriter:
    """Appends records from any thread; a daemon thread does the I/O.

    ``flush_interval``: seconds between flushes to the OS (and on close, an fsync).
    ``rotate_bytes``: when the file passes this size it is renamed to
    ``<path>.0001``, ``<path>.0002``, ... (oldest first) and a fresh ``<path>`` begins.
    """

    def __init__(self, path: Path | str, run_id: str = "", flush_interval: float = 0.5,
                 queue_size: int = 1024, rotate_bytes: int = 0, new_segment: bool = False) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.rotate_bytes = rotate_bytes
        self.records = 0
        self.bytes = 0
        self.segments = 0
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_size)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            read_header(self.path)  # refuse to append to something that is not a log
            if new_segment:  # a restarted broker: whatever a crash left at the old tail stays in its own segment
                self._move_to_segment()
        self._file = self._open()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="msglog-writer", daemon=True)
        self._thread.start()

    def _open(self) -> BinaryIO:
        new = not self.path.exists() or self.path.stat().st_size == 0
        f: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - closed on rotation and in close()
        if new:
            meta = msgpack.packb({"format": FORMAT_VERSION, "protocol": PROTOCOL_VERSION.decode(),
                                  "run_id": self.run_id, "created": time.time()})
            f.write(_FILE_HEAD.pack(MAGIC, FORMAT_VERSION, len(meta)) + meta)
        return f

    def _rotate(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._move_to_segment()
        self._file = self._open()

    def _move_to_segment(self) -> None:
        existing = sorted(self.path.parent.glob(f"{self.path.name}.[0-9][0-9][0-9][0-9]"))
        n = int(existing[-1].suffix[1:]) + 1 if existing else 1
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n:04d}"))
        self.segments += 1

    def append(self, direction: Direction, peer: str, frames: Sequence[Any],
               wall: float | None = None, mono: float | None = None) -> None:
        """Queue one message; blocks (never drops) when the writer is behind, and raises once the writer failed."""
        item = (time.time() if wall is None else wall, time.monotonic() if mono is None else mono,
                int(direction), peer, list(frames))
        while True:
            if self._error is not None:
                raise RuntimeError(f"message log {self.path} failed: {self._error}")
            try:
                self._queue.put(item, timeout=0.25)  # bounded: a dead writer must not hang the caller
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        last_flush = time.monotonic()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.flush_interval)
                except queue.Empty:
                    item = ...
                if item is None:
                    break
                if item is not ...:
                    self._write(*item)
                if time.monotonic() - last_flush >= self.flush_interval:
                    self._file.flush()
                    last_flush = time.monotonic()
        except BaseException as exc:  # surfaced to the broker on its next append
            self._error = exc
            log.exception("message log writer failed")
        finally:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:  # the disk that failed the write may fail this too; the error is kept above
                self._error = self._error or exc
            finally:
                self._file.close()

    def _write(self, wall: float, mono: float, direction: int, peer: str, frames: list[Any]) -> None:
        peer_b = peer.encode()[:65535]
        head = _BODY_HEAD.pack(wall, mono, direction, len(peer_b)) + peer_b + _U16.pack(len(frames))
        views = [frame_view(f).cast("B") for f in frames]
        parts: list[Any] = [head]
        for v in views:
            parts.append(_U32.pack(len(v)))
            parts.append(v)
        crc = 0
        length = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
            length += len(p)
        self._file.write(_REC_HEAD.pack(length, crc))
        for p in parts:
            self._file.write(p)
        self.records += 1
        self.bytes += length + _REC_HEAD.size
        if self.rotate_bytes and self._file.tell() >= self.rotate_bytes:
            self._rotate()

    def close(self) -> None:
        """Write everything queued, fsync and close."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def segments(path: Path | str) -> list[Path]:
    """A rotated log's files, oldest first, the live file last."""
    p = Path(path)
    older = sorted(p.parent.glob(f"{p.name}.[0-9][0-9][0-9][0-9]"))
    return [*older, p] if p.exists() else older


def iter_log(path: Path | str, report: ReadReport | None = None) -> Iterator[Record]:
    """Every record of a log and its rotated segments, oldest first; stops at the first damaged segment
    (``report`` names it)."""
    report = report if report is not None else ReadReport()
    files = segments(path) or [Path(path)]
    for i, seg in enumerate(files):
        yield from iter_records(seg, report)
        if report.truncated_at is not None and i < len(files) - 1:  # a crash ended that segment: go on
            report.gaps.append(f"{Path(seg).name}: {report.error} (byte {report.truncated_at})")
            report.truncated_at, report.error = None, ""
        elif report.truncated_at is not None or report.corrupt_at is not None:
            report.error = f"{Path(seg).name}: {report.error}"
            return


def read_header(path: Path | str) -> dict[str, Any]:
    with open(path, "rb") as f:
        meta, _ = _read_file_header(f, path)
    return meta


def _read_file_header(f: BinaryIO, path: Path | str) -> tuple[dict[str, Any], int]:
    head = f.read(_FILE_HEAD.size)
    if len(head) < _FILE_HEAD.size:
        raise LogFormatError(path, 0, "file is too short to be a dgan message log")
    magic, version, meta_len = _FILE_HEAD.unpack(head)
    if magic != MAGIC:
        raise LogFormatError(path, 0, "not a dgan message log (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise LogFormatError(path, 8, f"log format version {version} is not supported (this reads {FORMAT_VERSION})")
    raw = f.read(meta_len)
    try:
        meta = msgpack.unpackb(raw, raw=False)
    except Exception:
        raise LogFormatError(path, _FILE_HEAD.size, "file header metadata is not valid msgpack") from None
    if len(raw) != meta_len or not isinstance(meta, dict):
        raise LogFormatError(path, _FILE_HEAD.size, "file header metadata is truncated or not a map")
    return meta, _FILE_HEAD.size + meta_len


@dataclass
class ReadReport:
    """What a full read found: complete records, and any damage after them."""

    records: int = 0
    bytes: int = 0
    truncated_at: int | None = None  # offset of an incomplete last record
    corrupt_at: int | None = None  # offset of the first record that failed its CRC or parse
    error: str = ""
    gaps: list[str] = field(default_factory=list)  # truncated tails of older segments (a crash, then a restart)


def iter_records(path: Path | str, report: ReadReport | None = None) -> Iterator[Record]:
    """Stream the records of a log in constant memory.

    A truncated last record (a crash mid-write) ends the stream quietly and is
    noted in ``report``; a corrupt record ends it too, with its offset noted.
    The file header must be valid, or :class:`LogFormatError` is raised.
    """
    report = report if report is not None else ReadReport()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        _, offset = _read_file_header(f, path)
        while offset < size:
            head = f.read(_REC_HEAD.size)
            if len(head) < _REC_HEAD.size:
                report.truncated_at, report.error = offset, "incomplete record header at end of file"
                return
            length, crc = _REC_HEAD.unpack(head)
            if offset + _REC_HEAD.size + length > size:
                report.truncated_at = offset
                report.error = f"last record declares {length} bytes but the file ends first"
                return
            body = f.read(length)
            if zlib.crc32(body) != crc:
                report.corrupt_at, report.error = offset, "CRC mismatch"
                return
            try:
                record = _parse_body(body, offset)
            except (struct.error, ValueError, UnicodeDecodeError) as exc:
                report.corrupt_at, report.error = offset, f"record does not parse ({exc})"
                return
            report.records += 1
            report.bytes += length + _REC_HEAD.size
            offset += _REC_HEAD.size + length
            yield record


def _parse_body(body: bytes, offset: int) -> Record:
    wall, mono, direction, peer_len = _BODY_HEAD.unpack_from(body, 0)
    pos = _BODY_HEAD.size
    peer = body[pos:pos + peer_len].decode()
    pos += peer_len
    (nframes,) = _U16.unpack_from(body, pos)
    pos += _U16.size
    frames = []
    for _ in range(nframes):
        (n,) = _U32.unpack_from(body, pos)
        pos += _U32.size
        if pos + n > len(body):
            raise ValueError("frame runs past the end of its record")
        frames.append(body[pos:pos + n])
        pos += n
    if pos != len(body):
        raise ValueError("bytes left over after the last frame")
    return Record(offset, wall, mono, Direction(direction), peer, frames)
