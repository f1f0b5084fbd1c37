"""Logging set-up shared by every command: rich on a terminal, JSON lines on request."""

from __future__ import annotations

import json
import logging
import sys
import time

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.time(), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO", fmt: str = "rich", process: str = "") -> None:
    """Configure the root logger once per process."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif fmt == "plain" or not sys.stderr.isatty():
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[{process}] " if process else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    else:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        if process:
            handler.setFormatter(logging.Formatter(f"[{process}] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
