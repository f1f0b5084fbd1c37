"""SIGTERM and SIGHUP unwind a process that owns children, as Ctrl-C does, without cutting its cleanup short.

Their default action ends the process at once, skipping the ``finally`` that stops the children, so a ``kill``
or ``timeout`` of ``dgan run`` or ``dgan experiment`` used to leave the broker, generator and nodes running.
A SIGKILL cannot be caught: for it, each child asks the kernel for a SIGTERM when its parent dies
(:func:`die_with_parent`, which a child started with ``DIE_WITH_PARENT`` in its environment calls at start-up).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("dgan.stop_signals")
DIE_WITH_PARENT = "DGAN_DIE_WITH_PARENT"  # the environment variable: the parent's pid
_watched_parent: int | None = None  # that pid, once this process has asked to end with it


class StopSignals:
    """Turns SIGTERM and SIGHUP into one ``SystemExit(128 + signum)``, deferred while :meth:`held` is entered.

    Hold it around what must not be cut in two: starting a child (a child forked but not yet recorded would
    never be stopped) and stopping them all. A signal there raises when the held section ends.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.raised = False
        self._holds = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.raised:  # one unwinding is enough: a second signal must not cut short the cleanup it started
            return
        if self._holds:
            self.pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.raised, self.pending = True, None
        raise SystemExit(128 + signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds and self.pending is not None and not self.raised:
                self._raise(self.pending)


@contextmanager
def stop_signals_unwind() -> Iterator[StopSignals]:
    """Install :class:`StopSignals` for SIGTERM and SIGHUP where they still have their default action (a
    handler someone set, or ``nohup``'s ignored SIGHUP, is left alone), and only in the main thread, where
    Python delivers signals; the previous handlers come back on the way out."""
    stops = StopSignals()
    previous: dict[signal.Signals, Any] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_DFL:
                    previous[sig] = signal.signal(sig, stops.on_signal)
        yield stops
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ancestors() -> list[int]:
    """This process's parent, that one's parent and so on up to init (Linux's /proc); elsewhere the parent alone."""
    chain, pid = [], os.getpid()
    while pid > 1 and len(chain) < 64:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, then the parent's pid
        chain.append(pid)
    return chain or [os.getppid()]


def die_with_parent(parent: int) -> None:
    """On Linux, this process gets SIGTERM when ``parent`` ends, however it ends (a SIGKILL too): a child of
    ``dgan run`` or a benchmark's pool worker stops instead of training on, orphaned, for hours.

    PR_SET_PDEATHSIG follows the *thread* that started this process: start it from a thread that outlives it
    (``run_local`` starts and stops its children on one thread; a ``spawn`` pool made on the main thread).

    A process between ``parent`` and this one (a prefix that forks, such as ``sh -c``; a ``forkserver``) would
    take the kernel's signal, and it outlives a SIGKILLed ``parent``: then a watcher thread reads the ancestry
    once a second and sends the same SIGTERM. ``ip netns exec`` and ``taskset`` exec in place: the kernel does it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process may outlive its parent",
                        ctypes.get_errno())
    if parent not in _ancestors():  # the parent died before the line above ran
        os._exit(1)
    if os.getppid() != parent:
        threading.Thread(target=_term_when_gone, args=(parent,), name="die-with-parent", daemon=True).start()


def _term_when_gone(parent: int, every: float = 1.0) -> None:
    while parent in _ancestors():
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent_from_env() -> None:
    """:func:`die_with_parent` for a child whose starter put its pid in ``DGAN_DIE_WITH_PARENT``; a value that
    is not a pid is ignored (the process then lives as any other)."""
    global _watched_parent
    value = os.environ.pop(DIE_WITH_PARENT, "")  # not passed on to this process's own children
    if value.isdigit():
        die_with_parent(int(value))
        _watched_parent = int(value)


def parent_gone() -> bool:
    """True when this process was started to end with its parent (``die_with_parent_from_env``) and that parent
    has died: its SIGTERM is the kernel's, and nobody waits for what it would still write. A process started
    by hand (nohup, then the shell closed) is never orphaned in this sense."""
    return _watched_parent is not None and _watched_parent not in _ancestors()
