"""Checks that several commands make on their arguments, each with one clear line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def require_log(path: Path, console: Console) -> None:
    """A message log (or its rotated segments) must be there."""
    from dgan.msglog import segments

    if not path.exists() and not segments(path):
        console.print(f"[red]no such log: {path}[/red]")
        raise typer.Exit(2)
