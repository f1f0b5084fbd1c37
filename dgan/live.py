"""The live view: status broadcasts from the broker's XPUB, rendered with rich.

The generator publishes its status (step, rates, one entry per node) and the
broker its own counters; any process, on any host, can subscribe read-only
(`dgan monitor tcp://HOST:5557`) and see the same panel that `dgan run` shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dgan import protocol as P


class StatusSubscriber:
    """A SUB socket on the broadcast channel keeping the latest generator and broker status."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None,
                 socket_setup: Callable[[zmq.Socket], None] | None = None) -> None:
        self.endpoint = endpoint
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if socket_setup is not None:
            socket_setup(self.sock)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"status")
        self.sock.connect(endpoint)
        self.generator: dict[str, Any] = {}
        self.broker: dict[str, Any] = {}
        self.ended = False
        self.updates = 0
        self.rejected = 0

    def poll(self, timeout: float = 0.0) -> bool:
        """Read what has arrived; True if anything changed."""
        changed = False
        wait_ms = int(timeout * 1000)
        while self.sock.poll(wait_ms):
            wait_ms = 0
            frames = self.sock.recv_multipart()
            try:
                msg = P.decode(frames[1:])
            except P.ProtocolError:
                self.rejected += 1
                continue
            if msg.kind == P.Kind.GOODBYE:
                self.ended = True
            elif msg.kind == P.Kind.STATUS:
                if "broker" in msg.meta:
                    self.broker = msg.meta["broker"]
                else:
                    self.generator = msg.meta
                self.updates += 1
            changed = True
        return changed

    def close(self) -> None:
        self.sock.close()


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render(generator: dict[str, Any], broker: dict[str, Any], title: str = "dgan") -> Panel:
    """The panel: generator progress, one row per node, broker throughput."""
    if not generator:
        body: Any = Text("waiting for the generator's first status…", style="dim")
        return Panel(body, title=title)
    step, steps = generator.get("step", 0), generator.get("steps", 0)
    head = Text.assemble(
        ("step ", "bold"), f"{step}/{steps}  ", ("updates/s ", "bold"), _fmt(generator.get("updates_per_s")),
        ("  samples applied ", "bold"), str(generator.get("samples_applied", 0)),
        ("  mode ", "bold"), str(generator.get("mode", "?")),
        ("  dropped stale ", "bold"), str(generator.get("dropped_stale", 0)),
        (f" ({generator['discounted_stale']} discounted)" if generator.get("discounted_stale") else ""),
        ("  judges: label IoU ", "bold"), _fmt(generator.get("label_iou")),
        (", trained-on-fakes IoU on real ", "bold"), _fmt(generator.get("transfer_iou")))
    table = Table(expand=True)
    for col in ("node", "feedback", "alive", "batches", "D loss", "G adv", "L1", "label IoU", "staleness",
                "dropped stale", "last seen"):
        table.add_column(col, justify="right" if col != "node" else "left")
    for name, n in sorted(generator.get("nodes", {}).items()):
        losses = n.get("losses", {})
        d_loss = (losses["d_real"] + losses["d_fake"]) / 2 if "d_real" in losses and "d_fake" in losses else None
        mode = str(n.get("feedback", "?"))
        table.add_row(name, f"[red]{mode} (leaks)[/red]" if mode == "l1" else mode,
                      "[green]yes[/green]" if n.get("alive") else "[red]no[/red]", str(n.get("batches", 0)),
                      _fmt(d_loss), _fmt(losses.get("g_adv")), _fmt(losses.get("g_l1")),
                      _fmt(losses.get("label_iou")), _fmt(n.get("staleness")), _dropped(n),
                      f"{_fmt(n.get('last_seen'), '.1f')} s ago")
    parts: list[Any] = [head, table]
    if generator.get("phase") == "synthesis":
        done, total = generator.get("phase_done", 0), max(1, generator.get("phase_total", 1))
        bar = "█" * int(30 * done / total) + "░" * (30 - int(30 * done / total))
        parts.append(Text.assemble(("synthesis ", "bold"), f"{bar} {done}/{total} images"))
    if broker:
        parts.append(Text.assemble(("broker ", "bold"), f"{_fmt(broker.get('msgs_per_s'), '.1f')} msg/s, "
                                   f"{_fmt(broker.get('mb_per_s'), '.2f')} MB/s, errors {broker.get('errors', 0)}, "
                                   f"nodes {broker.get('nodes', 0)}"))
    return Panel(Group(*parts), title=title)


def _dropped(node: dict[str, Any]) -> str:
    """A node's stale-dropped batches, red where they outnumber its applied ones: its data has stopped counting."""
    dropped, batches = node.get("dropped_stale", 0), node.get("batches", 0)
    if not isinstance(dropped, int) or not isinstance(batches, int):
        return "?"
    return f"[red]{dropped}[/red]" if dropped > batches else str(dropped)


def monitor(endpoint: str, duration: float | None = None, once: bool = False,
            socket_setup: Callable[[zmq.Socket], None] | None = None) -> StatusSubscriber:
    """Attach to a broker's broadcast channel and show the live panel until the run ends."""
    from rich.console import Console
    from rich.live import Live

    sub = StatusSubscriber(endpoint, socket_setup=socket_setup)
    console = Console()
    start = time.monotonic()
    try:
        with Live(render({}, {}, f"dgan monitor {endpoint}"), console=console, refresh_per_second=4,
                  auto_refresh=console.is_terminal) as live:
            while not sub.ended and (duration is None or time.monotonic() - start < duration):
                if sub.poll(0.25):
                    live.update(render(sub.generator, sub.broker, f"dgan monitor {endpoint}"))
                    if once and sub.generator:
                        break
    finally:
        sub.close()
    return sub


class RunView:
    """What `dgan run` shows while it waits: a live panel, JSON lines, or nothing."""

    def __init__(self, mode: str, title: str, console: Any) -> None:
        self.mode, self.title, self.console = mode, title, console
        self.sub: StatusSubscriber | None = None
        self.live: Any = None
        self._last_json = 0.0

    def __enter__(self) -> RunView:
        if self.mode == "live":
            from rich.live import Live

            self.live = Live(render({}, {}, self.title), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            if self.sub is not None:
                self.live.update(render(self.sub.generator, self.sub.broker, self.title))
            self.live.__exit__(None, None, None)
        if self.sub is not None:
            self.sub.close()

    def watch(self, endpoint: str) -> None:
        if self.mode == "quiet":
            return
        if self.sub is None:
            self.sub = StatusSubscriber(endpoint)
        if not self.sub.poll(0.0):
            return
        if self.live is not None:
            self.live.update(render(self.sub.generator, self.sub.broker, self.title))
        elif self.mode == "json" and time.monotonic() - self._last_json >= 1.0 and self.sub.generator:
            import json
            import logging

            self._last_json = time.monotonic()
            logging.getLogger("dgan.status").info(json.dumps({"generator": self.sub.generator,
                                                              "broker": self.sub.broker}))
