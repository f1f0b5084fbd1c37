"""Which DGAN trainings have already finished, with which settings: so an experiment rerun (more seeds, more
methods, department models) loads them instead of spending the GAN hours again."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from dgan.provenance import code_version, stale_data
from dgan.run import RunConfig

log = logging.getLogger("dgan.experiment")

FINISHED = "finished.json"  # in a DGAN run's folder, written once its training has ended well


def launch_fingerprint(run: RunConfig) -> dict[str, Any]:
    """What decides a DGAN training's outcome: every setting its processes start with, but not where it writes
    or how long it may take."""
    d = asdict(run)
    for volatile in ("out", "timeout", "placement", "record"):
        d.pop(volatile)
    if not d["channels_last"]:  # added later: runs that finished before it existed keep their fingerprints
        d.pop("channels_last")
    d["node_args"] = _without(d["node_args"], ["--d-steps", "1"])  # passed only when > 1 before session 32
    return json.loads(json.dumps(d, default=str))


def _without(args: list[str], pair: list[str]) -> list[str]:
    """``args`` less each occurrence of the option and value ``pair``."""
    out, i = [], 0
    while i < len(args):
        if args[i:i + 2] == pair:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def finished_run(run: RunConfig, data_digest: str | None = None) -> dict[str, Any] | None:
    """The record of a training already finished in ``run.out`` with exactly these settings, or None. With
    ``data_digest`` (the experiment's :attr:`~dgan.experiment_splits.Splits.train_digest`), one made from other pixels
    under the same names is None too; a record from before digests were kept is taken as it is."""
    path = run.out / FINISHED
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("launch") != launch_fingerprint(run)
            or not isinstance(record.get("train_seconds"), int | float)):
        return None
    stale = stale_data(record.get("data_digest"), data_digest) if data_digest is not None else ""
    if stale:
        log.warning("the training in %s is not reused: %s", run.out, stale)
        return None
    return record if (run.out / "checkpoints" / "latest.pt").exists() else None


def record_finished(run: RunConfig, seconds: float, data_digest: str | None = None) -> None:
    """Written last, after the run ended well: a crash or Ctrl-C before it leaves the folder unfinished."""
    record = {"launch": launch_fingerprint(run), "train_seconds": seconds, "made_by": code_version(),
              **({"data_digest": data_digest} if data_digest is not None else {})}
    (run.out / FINISHED).write_text(json.dumps(record))


def forget_finished(run: RunConfig) -> None:
    """Before training into a folder afresh: its old record no longer describes what is there."""
    (run.out / FINISHED).unlink(missing_ok=True)
