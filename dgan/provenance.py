"""Which code made a result: dgan's version, the git commit of the checkout it ran from, and torch's version.

Cached experiment results and finished DGAN trainings are found again by what they depend on (settings, data,
splits), not by the code that made them, so that a docs change does not cost the GAN hours again. So each carries
this record, and reading one back says which code made it: a result from other code is then visible, never
silently mixed in."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import dgan

PACKAGE_ROOT = Path(dgan.__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str | None:
    """Read-only: no optional locks (``git status`` would otherwise refresh the index, and a user's commit at that
    moment could find it locked); the repository is ``root``'s, not one named by inherited GIT_* variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=False, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version_at(root: Path) -> dict[str, Any]:
    """dgan's and torch's versions, and where ``root`` is the top of a git checkout its commit and whether tracked
    files differ from it (``modified``); commit and modified are None elsewhere (an installed package, even one
    inside some other repository) or without git."""
    import torch

    top = _git(root, "rev-parse", "--show-toplevel")  # dgan's own checkout, not a repository that holds a venv
    mine = top is not None and Path(top).resolve() == root.resolve()
    commit = _git(root, "rev-parse", "--short=12", "HEAD") if mine else None
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"dgan": dgan.__version__, "commit": commit, "modified": None if status is None else bool(status),
            "torch": str(torch.__version__)}  # a plain str: a TorchVersion cannot be loaded with weights_only


@functools.cache
def code_version() -> dict[str, Any]:
    """:func:`code_version_at` for the code running now (read once per process)."""
    return code_version_at(PACKAGE_ROOT)


def describe(made_by: Any) -> str:
    """One phrase for a record's code: 'dgan 0.1.0, commit 0123abcd4567 (modified), torch 2.13.0'."""
    if not isinstance(made_by, dict):
        return "code not recorded (an older result)"
    commit = made_by.get("commit")
    where = f", commit {commit}{' (modified)' if made_by.get('modified') else ''}" if commit else ""
    return f"dgan {made_by.get('dgan', '?')}{where}, torch {made_by.get('torch', '?')}"


def same_code(made_by: Any, now: dict[str, Any]) -> bool:
    """Whether a record was made by this code: same versions and commit, neither side with local changes."""
    return (isinstance(made_by, dict) and all(made_by.get(k) == now.get(k) for k in ("dgan", "commit", "torch"))
            and now.get("commit") is not None and not made_by.get("modified") and not now.get("modified"))


def loaded_note(made_by: Any) -> str:
    """For a log line about a result read back: which code made it, and whether that is not the code running."""
    now = code_version()
    if same_code(made_by, now):
        return f"made by this code ({describe(now)})"
    return f"made by {describe(made_by)}; this is {describe(now)}"


def stale_data(recorded: Any, digest: str) -> str:
    """Why a record made from data with digest ``recorded`` must not stand for data with ``digest`` now ("" when
    it may: the same digest, or none recorded, as in records from before digests were kept)."""
    if recorded is None or recorded == digest:
        return ""
    return f"the data changed since it was made (digest {str(recorded)[:24]}, now {digest})"


def data_note(recorded: Any) -> str:
    """For a log line about a record read back: whether its pixels were checked."""
    return "data digest checked" if recorded is not None else "made before data digests were kept: pixels not checked"
