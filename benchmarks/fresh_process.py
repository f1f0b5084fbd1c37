"""One measurement in a fresh spawned process: for settings a process reads once and cannot undo (glibc's malloc
thresholds, libgomp's wait policy), so each measurement must start clean."""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any


def _child(conn: Connection, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        conn.send(fn(*args))
    except BaseException as exc:  # the parent reports it instead of waiting
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any, timeout_s: float) -> dict[str, Any]:
    """``fn(*args)`` (a module-level function) in a spawned process, killed if it runs past ``timeout_s``; its
    exception, or its death, is raised here as a RuntimeError."""
    ctx = get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise RuntimeError(f"a measurement ran past {timeout_s:.0f} s; its process was killed")
        result = receive.recv()
    except EOFError:
        raise RuntimeError(f"a measurement process died (exit code {proc.exitcode})") from None
    finally:
        proc.kill()
        proc.join(10)
    if "error" in result:
        raise RuntimeError(f"the measurement failed in its process: {result['error']}")
    return result
