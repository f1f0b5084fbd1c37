"""SIGTERM and SIGHUP unwind a process that owns children, as Ctrl-C does, without cutting its cleanup short.

Their default action ends the process at once, skipping the ``finally`` that stops the children, so a ``kill``
or ``timeout`` of ``dgan run`` or ``dgan experiment`` used to leave the broker, generator and nodes running.
A SIGKILL cannot be caught: for it, each child asks the kernel (or, behind a prefix that forks, a watcher
thread) for a SIGTERM when its parent dies (:func:`die_with_parent`, which a child started with
``DIE_WITH_PARENT`` in its environment calls at start-up).
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
DIE_WITH_PARENT = "DGAN_DIE_WITH_PARENT"  # the environment variable: starter_token() (or a bare pid)
_watched_parent: tuple[int, str | None, str | None] | None = None  # that token, once this process watches it


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


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after ``(comm)``: state, parent pid, ... (start time is [19]); None when
    no such process exists. A PermissionError (``hidepid``) is left to the caller: it means "cannot tell".
    Read as bytes: a command name (an ancestor's, say) need not be UTF-8; the fields after it are ASCII."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].decode("ascii").split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _ancestors() -> tuple[list[int], bool]:
    """This process's parent, that one's parent and so on up to init, and whether the walk read them all (Linux's
    /proc); elsewhere the parent alone."""
    if not sys.platform.startswith("linux"):
        return [os.getppid()], True
    chain, pid = [], os.getpid()
    while pid > 1 and len(chain) < 64:
        try:
            fields = _stat(pid)
        except OSError:
            return chain, False
        if fields is None or int(fields[1]) <= 0:  # gone mid-walk, or the top of a container's tree
            break
        pid = int(fields[1])
        chain.append(pid)
    return chain, True


def starter_token() -> str:
    """What a starter puts in ``DGAN_DIE_WITH_PARENT``: its pid, start time and pid namespace, so that a child
    behind any prefix (one that forks, or detaches it) can tell whether this very process is still alive."""
    pid = os.getpid()
    try:
        fields = _stat(pid)
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return str(pid)
    return f"{pid}:{fields[19]}:{ns}" if fields else str(pid)


def _starter_alive(parent: int, started: str | None) -> bool | None:
    """True or False, or None where /proc will not say. With ``started`` (the token's start time) any visible
    process is checked, so a reused pid is no match; without it, ``parent`` must be an ancestor."""
    if started is None:
        chain, complete = _ancestors()
        return True if parent in chain else (False if complete else None)
    try:
        fields = _stat(parent)
    except OSError:
        return None
    return fields is not None and fields[0] != "Z" and fields[19] == started


def die_with_parent(parent: int, started: str | None = None, ns: str | None = None) -> bool:
    """On Linux, this process gets SIGTERM when ``parent`` ends, however it ends (a SIGKILL too): a child of
    ``dgan run`` or a benchmark's pool worker stops instead of training on, orphaned, for hours. False where it
    cannot watch ``parent`` (another pid namespace, /proc hidden): it then lives as any other process.

    PR_SET_PDEATHSIG follows the *thread* that started this process: start it from a thread that outlives it
    (``run_local`` starts and stops its children on one thread; a ``spawn`` pool made on the main thread).

    A process between ``parent`` and this one (a prefix that forks, such as ``sh -c``; a ``forkserver``) would
    take the kernel's signal, and it outlives a SIGKILLed ``parent``; a prefix that detaches (``setsid -f``)
    leaves none. Then a watcher thread checks ``parent`` once a second and sends the same SIGTERM. ``ip netns
    exec`` and ``taskset`` exec in place: the kernel does it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process may outlive its parent",
                        ctypes.get_errno())
        try:
            here = os.readlink("/proc/self/ns/pid")
        except OSError:
            here = None
        if ns is not None and here is not None and here != ns:
            log.warning("started in another pid namespace than its starter (pid %d there): this process cannot "
                        "see it and does not end with it", parent)
            return False
    alive = _starter_alive(parent, started)
    if alive is None:
        log.warning("cannot read whether pid %d, which started this process, is alive (/proc hidden?): this "
                    "process may outlive it", parent)
        return False
    if not alive:  # it died before the prctl above, or was gone before this process started
        sys.stderr.write(f"dgan: the process that started this one (pid {parent}) has ended: exiting\n")
        sys.stderr.flush()  # os._exit flushes nothing
        os._exit(1)
    if os.getppid() != parent:
        threading.Thread(target=_term_when_gone, args=(parent, started), name="die-with-parent", daemon=True).start()
    return True


def _term_when_gone(parent: int, started: str | None, every: float = 1.0) -> None:
    while _starter_alive(parent, started) is not False:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


def _parse_token(value: str) -> tuple[int, str | None, str | None] | None:
    parts = value.split(":", 2)
    if not parts[0].isdigit():
        return None
    if len(parts) == 3 and parts[1].isdigit() and parts[2]:
        return int(parts[0]), parts[1], parts[2]
    return (int(parts[0]), None, None) if len(parts) == 1 else None


def die_with_parent_from_env() -> None:
    """:func:`die_with_parent` for a child whose starter put :func:`starter_token` (or its bare pid) in
    ``DGAN_DIE_WITH_PARENT``; a value that is neither is ignored (the process then lives as any other)."""
    global _watched_parent
    token = _parse_token(os.environ.pop(DIE_WITH_PARENT, ""))  # not passed on to this process's own children
    if token is not None:
        _watched_parent = token  # before any watcher can signal: a handler may ask parent_gone at once
        if not die_with_parent(*token):
            _watched_parent = None


def parent_gone() -> bool:
    """True when this process was started to end with its parent (``die_with_parent_from_env``) and that parent
    has died: the SIGTERM is the kernel's or the watcher's, and nobody waits for what it would still write. A
    process started by hand (nohup, then the shell closed) is never orphaned in this sense."""
    return _watched_parent is not None and _starter_alive(*_watched_parent[:2]) is False
