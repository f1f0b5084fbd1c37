"""What people look at: the live panel under a real terminal, JSON status lines, and the HTML report in Chromium."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dgan.feedback import DEFAULT_MODE
from dgan.report import write_report
from dgan.run import RunConfig, run_local
from tests.conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
SMALL = ["--image-size", "32", "--g-width", "8", "--d-width", "8", "--scenes", "12", "--batch-size", "2"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run_local(RunConfig(nodes=3, steps=30, out=out, scenes=12, image_size=32, g_width=8, d_width=8, batch_size=2,
                        sample_every=10, checkpoint_every=0, timeout=240, extra_generator_args=["--g-depth", "3"],
                        node_args=["--d-warmup", "0"]))  # every node feeds back within 30 steps
    return out


def test_report_renders_in_headless_chromium_with_every_image_loaded(small_run: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "install Debian's chromium and chromium-driver (.ci/run and `just test` do)"
    report = write_report(small_run)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1400,2400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        driver.get(report.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        missing = driver.execute_script(
            "return Array.from(document.querySelectorAll('.missing')).map(m => m.textContent)")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        driver.quit()
    assert sections == ["config", "losses", "staleness", "throughput", "samples", "experiment"]
    assert len(images) >= 5  # loss curves, staleness, throughput, sample grids
    assert all(complete and width > 0 for _, complete, width in images), images
    assert missing == ["missing: results.json (run `dgan experiment`)"]  # shown as missing, not an error
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_report_of_an_empty_folder_shows_every_piece_as_missing(tmp_path: Path) -> None:
    text = write_report(tmp_path).read_text()
    assert text.count('class="missing"') == 6


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)


def test_live_panel_shows_every_node_under_a_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
    cmd = [sys.executable, "-m", "dgan", "run", "--nodes", "3", "--steps", "40", "--out", str(tmp_path / "run"),
           *SMALL]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    screen = _strip_ansi(b"".join(chunks).decode(errors="replace"))
    assert proc.returncode == 0, screen[-3000:]
    panel_rows = [line for line in screen.splitlines()
                  if re.search(rf"node[0-2]\s*│\s*{DEFAULT_MODE.value}\s*│\s*(yes|no)", line)]  # announced modes
    assert {re.search(r"node[0-2]", r).group(0) for r in panel_rows} == {"node0", "node1", "node2"}
    assert "updates/s" in screen and "broker" in screen


def test_log_format_json_lines_parse(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dgan", "run", "--nodes", "2", "--steps", "20", "--out", str(tmp_path / "run"),
           "--log-format", "json", *SMALL]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    lines, bad = [], []
    for line in res.stderr.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(line)
    assert bad == [], f"lines on stderr that are not JSON: {bad[:5]}"
    statuses = [json.loads(rec["message"]) for rec in lines if rec["logger"] == "dgan.status"]
    assert statuses and set(statuses[-1]["generator"]["nodes"]) == {"node0", "node1"}


def test_demo_segmentation_stage_tests_on_held_out_scenes_and_the_report_shows_it(small_run: Path) -> None:
    from dgan.demo import segment_synthetic

    result = segment_synthetic(small_run, size=32, steps=20, test_scenes=8, threads=1)
    assert 0.0 <= result["iou"] <= 1.0 and result["train_pairs"] == 12 and result["test_scenes"] == 8
    tried = result["tried"]  # a plain and a recoloured segmenter; the one kept is the best on validation
    assert [t["recolour"] for t in tried] == [0.0, 0.5]
    assert result["val_iou"] == max(t["best_val_iou"] for t in tried)
    assert result["recolour"] == next(t["recolour"] for t in tried if t["best_val_iou"] == result["val_iou"])
    with pytest.raises(ValueError, match="recolour"):
        segment_synthetic(small_run, size=32, steps=20, test_scenes=8, threads=1, recolour=())
    saved = json.loads((small_run / "results.json").read_text())
    assert saved["methods"]["dgan"]["iou"] == result["iou"] and "all_building_baseline" in saved["methods"]
    assert result["all_building_iou"] == saved["methods"]["all_building_baseline"]["iou"] > 0
    text = write_report(small_run).read_text()
    assert 'id="experiment"' in text and "missing: results.json" not in text
    assert (small_run / "predictions" / "dgan.png").exists()


def test_report_lists_the_experiment_claims_as_met_or_missed(tmp_path: Path) -> None:
    from dgan.experiment import claims

    methods = {"real_all": {"iou": 0.6}, "real_partial": {"iou": 0.5}, "central_gan": {"iou": 0.4},
               "dgan": {"iou": 0.45}}
    (tmp_path / "results.json").write_text(json.dumps({"methods": methods, "claims": claims(methods)}))
    text = write_report(tmp_path).read_text()
    assert "<td>dgan_vs_central</td><td>1.125 (target 0.95)</td><td>met</td>" in text
    assert "<td>dgan_vs_partial_mean</td><td>0.450 vs 0.500</td><td>missed</td>" in text
    assert "<td>dgan_vs_real_all</td><td>0.750 (target 0.85)</td><td>missed</td>" in text
    methods["real_partial"]["per_node"] = {"node0": {"iou": 0.5}}
    methods["dgan_local"] = {"iou": 0.6, "per_node": {"node0": {"iou": 0.6}}}
    (tmp_path / "results.json").write_text(json.dumps({"methods": methods, "claims": claims(methods)}))
    text = write_report(tmp_path).read_text()  # the department claim has its own figure
    assert "<td>dgan_local_vs_real_partial</td><td>node0 +0.100; mean +0.100" in text
    methods["central_gan"]["seeds"] = [{"gan_seed": g, "iou": 0.4, "best_val_iou": 0.4} for g in (0, 1)]
    methods["dgan"]["seeds"] = [{"gan_seed": g, "iou": v, "best_val_iou": v} for g, v in ((0, 0.4), (1, 0.2))]
    (tmp_path / "results.json").write_text(json.dumps({"methods": methods, "claims": claims(methods)}))
    text = write_report(tmp_path).read_text()  # one ratio per GAN seed pair
    assert ("<td>dgan_vs_central_per_gan_seed</td><td>test 1.000, 0.500; validation 1.000, 0.500 (target 0.9 each, "
            "judged on test)</td><td>missed</td>") in text


def test_report_and_results_md_show_each_department_and_gan_training_with_validation_beside(tmp_path: Path) -> None:
    from dgan.experiment import claims
    from dgan.experiment_tables import department_table

    def seeds(*pairs: tuple[int, float, float]) -> list[dict[str, float]]:
        return [{"gan_seed": g, "best_val_iou": v, "iou": t} for g, v, t in pairs]

    methods = {"real_all": {"iou": 0.6}, "central_gan": {"iou": 0.4, "gan_seconds": [1, 1],
                                                         "seeds": seeds((0, 0.4, 0.4), (1, 0.3, 0.4))},
               "real_partial": {"iou": 0.5, "per_node": {"node0": {"iou": 0.5, "iou_std": 0.01,
                                                                   "seeds": seeds((0, 0.55, 0.5), (1, 0.45, 0.5))}}},
               "dgan": {"iou": 0.3, "gan_seconds": [1, 1], "seeds": seeds((0, 0.2, 0.3), (1, 0.3, 0.3))},
               "dgan_local": {"iou": 0.52, "per_node": {"node0": {"iou": 0.52, "iou_std": 0.02,
                                                                  "seeds": seeds((0, 0.4, 0.5), (1, 0.4, 0.54))}}}}
    results = {"dataset": "d", "partition": "group", "resolution": 32, "methods": methods, "claims": claims(methods)}
    (tmp_path / "results.json").write_text(json.dumps(results))
    text = write_report(tmp_path).read_text()
    # the department gains 0.02 on test but loses 0.1 on validation: both show, in the report and in results.md
    cell = "0.520 ± 0.020 (+0.020; val 0.400, -0.100)"
    assert f"<td>{cell}</td>" in text and "<td>0.500 ± 0.010 (val 0.500)</td>" in text
    assert "<td>0.300 (val 0.250)</td>" in text  # the synthetic set alone
    assert "<td>central_gan</td><td>0.400 / 0.400</td><td>0.300 / 0.400</td>" in text  # per GAN training
    assert f"| node0 | 0.500 ± 0.010 (val 0.500) | 0.300 (val 0.250) | {cell} |" in department_table(methods)


def test_live_panel_header_shows_both_judges_verdicts() -> None:
    from rich.console import Console

    from dgan.live import render

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render({"step": 3, "steps": 9, "label_iou": 0.31, "transfer_iou": 0.125, "nodes": {}}, {}))
    text = console.export_text()
    assert "label IoU 0.310" in text and "trained-on-fakes IoU on real 0.125" in text
    console.print(render({"step": 3, "steps": 9, "nodes": {}}, {}))  # before any verdict: a dash, no error
    assert "trained-on-fakes IoU on real -" in console.export_text()
