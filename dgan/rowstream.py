"""Rows that grow with the run go to disk as they come: memory stays bounded however long the run.

A :class:`RowStream` appends one JSON value per line to ``NAME.jsonl`` and, at
the end, writes the JSON document the report and benchmarks read, line by
line, without loading the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class RowStream:
    def __init__(self, path: Path, append: bool = False, flush_every: int = 64) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists():
            _cut_torn_tail(self.path)
        self._file: IO[str] = open(self.path, "a" if append else "w")  # noqa: SIM115 - closed in close()
        self.flush_every = flush_every
        self.rows = 0

    def append(self, row: Any) -> None:
        self._file.write(_dumps(row) + "\n")
        self.rows += 1
        if self.rows % self.flush_every == 0:
            self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def write_document(self, out: Path, head: dict[str, Any] | None = None, key: str = "rows") -> None:
        """``out`` = ``{**head, key: [rows...]}``, or a bare list without ``head``; streamed from the file."""
        self._file.flush()
        with open(out, "w") as f:
            if head is None:
                f.write("[")
            else:
                f.write(json.dumps(head)[:-1] + (", " if head else "") + json.dumps(key) + ": [")
            for i, row in enumerate(read_rows(self.path)):
                f.write(("," if i else "") + _dumps(row))
            f.write("]" if head is None else "]}")


def read_rows(path: Path) -> Iterator[Any]:
    """The rows of a ``.jsonl`` file, one at a time; a line torn by a kill -9 is skipped."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _dumps(row: Any) -> str:
    return json.dumps(row, separators=(",", ":"))


def _cut_torn_tail(path: Path) -> None:
    """A process killed mid-write can leave half a line: drop it, so appended rows start on a line of their own."""
    with open(path, "rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(4096, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(pos - step + cut + 1)
                return
            pos -= step
        f.truncate(0)
