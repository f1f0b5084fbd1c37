"""Message-log speed: write, and read-and-verify (every CRC), in MB/s."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dgan import protocol as P
from dgan.msglog import Direction, MessageLogWriter, ReadReport, iter_records


def run_msglog_benchmark(quick: bool, json_out: Path | None, payload: int = 1024 * 1024) -> dict[str, Any]:
    total_mb = 64 if quick else 512
    n = total_mb * 1024 * 1024 // payload
    frames = P.encode(P.make(P.Kind.FEEDBACK, "bench", meta={"losses": {}},
                             tensors={"grad": np.zeros((1, 1, 1, payload // 4), np.float32)}))
    writes, reads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(3):
            path = Path(tmp) / f"b{rep}.dgl"
            t0 = time.perf_counter()
            w = MessageLogWriter(path)
            for _ in range(n):
                w.append(Direction.FROM_NODE, "bench", frames)
            w.close()  # includes flush and fsync
            writes.append(path.stat().st_size / 1e6 / (time.perf_counter() - t0))
            report = ReadReport()
            t0 = time.perf_counter()
            for _ in iter_records(path, report):
                pass
            reads.append(report.bytes / 1e6 / (time.perf_counter() - t0))
            if report.records != n:
                raise RuntimeError(f"read back {report.records} of {n} records")
            path.unlink()
    result = {"log_mb": total_mb, "record_bytes": payload, "write_mb_per_s": statistics.median(writes),
              "verify_mb_per_s": statistics.median(reads), "quick": quick}
    table = Table(title=f"message log, {total_mb} MB of {payload // 1024} KiB records (median of 3)")
    table.add_column("operation")
    table.add_column("MB/s", justify="right")
    table.add_row("write (append + CRC + fsync at close)", f"{result['write_mb_per_s']:.0f}")
    table.add_row("read + verify every CRC", f"{result['verify_mb_per_s']:.0f}")
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
