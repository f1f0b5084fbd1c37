"""Results carry the code that made them: the version, the git commit and whether the checkout was modified; a
result read back from a cache or a finished training says when other code made it."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

import dgan
import dgan.experiment as ex
from dgan.experiment_tables import provenance_lines
from dgan.finished_runs import FINISHED
from dgan.provenance import code_version, code_version_at, describe, loaded_note, same_code
from tests.test_experiment_reuse import _splits, trainings  # noqa: F401  (a fixture)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = code_version_at(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{12}", clean["commit"]) and clean["modified"] is False
    assert clean["dgan"] == dgan.__version__ and clean["torch"]
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert code_version_at(tmp_path)["modified"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version_at(tmp_path)["modified"] is True
    # a package installed into a venv inside some repository is not that repository's code
    (tmp_path / "venv" / "site-packages").mkdir(parents=True)
    assert code_version_at(tmp_path / "venv" / "site-packages")["commit"] is None


def test_outside_a_checkout_only_the_versions_are_known(tmp_path: Path) -> None:
    v = code_version_at(tmp_path)
    assert v["commit"] is None and v["modified"] is None and v["dgan"] == dgan.__version__
    assert describe(v) == f"dgan {dgan.__version__}, torch {v['torch']}"


def test_same_code_needs_the_same_commit_and_no_local_changes() -> None:
    now = {"dgan": "0.1.0", "commit": "abc", "modified": False, "torch": "2.13"}
    assert same_code(dict(now), now)
    assert not same_code({**now, "commit": "def"}, now)
    assert not same_code({**now, "torch": "2.12"}, now)
    assert not same_code({**now, "modified": True}, now)  # a modified checkout is not one known code
    assert not same_code(dict(now), {**now, "modified": True})
    assert not same_code({**now, "commit": None}, {**now, "commit": None})  # no commit: unknown, never "same"
    assert not same_code(None, now) and not same_code("junk", now)
    assert describe(None).startswith("code not recorded")
    assert describe({**now, "modified": True}) == "dgan 0.1.0, commit abc (modified), torch 2.13"


def test_a_cached_result_records_its_code_and_reading_it_back_says_which(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "real_all-old.json"
    old.write_text(json.dumps({"iou": 0.5}))  # cached before session 29: no record
    assert ex.from_cache(old)["made_by"] is None
    assert "code not recorded" in loaded_note(None) and "this is dgan" in loaded_note(None)
    now = code_version()
    if now["commit"] is not None and not now["modified"]:
        assert loaded_note(dict(now)).startswith("made by this code")
    results = {"code": now, "methods": {
        "real_all": {"iou": 0.5, "made_by": None},
        "real_partial": {"iou": 0.4, "made_by": {**now, "commit": "0" * 12, "modified": False}},
        "dgan": {"iou": 0.3}}}  # trained in this run: no made_by of its own, the run's code
    lines = provenance_lines(results)
    assert lines[0] == f"Code: {describe(now)}."
    listed = lines[2]
    assert "real_all (code not recorded" in listed and "real_partial (dgan" in listed and "dgan (" not in listed
    # a modified checkout: what this run cached itself is this run's code, not "other code"
    dirty = {**now, "commit": "1" * 12, "modified": True}
    own = {"code": dirty, "methods": {"real_all": {"iou": 0.5, "made_by": dict(dirty)},
                                      "dgan": {"iou": 0.3, "gan_made_by": [dict(dirty), None]}}}
    lines = provenance_lines(own)
    assert len(lines) == 4 and "real_all" not in lines[2] and "dgan GAN seed 1 (code not recorded" in lines[2]
    assert "dgan GAN seed 0" not in lines[2]
    # a method scored this run from generators an older run trained: its GAN seeds are listed, not hidden
    rescored = {"code": now, "methods": {"central_gan": {"iou": 0.5, "made_by": dict(now),
                                                         "gan_made_by": [None, dict(now)]}}}
    listed = provenance_lines(rescored)[2]
    assert "central_gan GAN seed 0 (code not recorded" in listed and "seed 1" not in listed
    assert provenance_lines({"code": now, "methods": {"central_gan": {"iou": 0.5, "made_by": None,
                                                                      "gan_made_by": [None]}}})[2].count("central") == 1


def test_a_finished_dgan_training_records_its_code_and_its_reuse_logs_it(
        tmp_path: Path, trainings: list, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    cfg = ex.ExperimentConfig(out=tmp_path / "exp", size=32, g_width=8, d_width=8, nodes=2, gan_steps=4)
    splits = _splits()
    ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    record = json.loads((next((tmp_path / "exp").glob("dgan_*_seed0")) / FINISHED).read_text())
    assert record["made_by"] == code_version()
    with caplog.at_level(logging.INFO, logger="dgan.experiment"):
        again = ex.dgan_run(cfg, splits, "async", 0, "adversarial")
    assert again.reused and again.made_by == code_version()  # carried to the method's gan_made_by
    assert any("reusing the finished training" in r.getMessage() and "made by" in r.getMessage()
               for r in caplog.records)


def test_git_is_asked_without_optional_locks_so_a_users_commit_never_finds_the_index_locked(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    index = tmp_path / ".git" / "index"
    before = index.stat().st_mtime_ns
    os.utime(tmp_path / "a.py", ns=(before + 10**9, before + 10**9))  # stat data stale: plain `git status` refreshes
    code_version_at(tmp_path)
    assert index.stat().st_mtime_ns == before
