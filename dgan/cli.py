"""The ``dgan`` command line: the app lives in :mod:`dgan.cli_app`; each module below adds its commands."""

from __future__ import annotations

from dgan import cli_bench, cli_experiment, cli_peers, cli_replay, cli_runs  # noqa: F401  (they register their commands)
from dgan.cli_app import app

__all__ = ["app"]
