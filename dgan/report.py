"""`dgan report RUN_DIR`: one self-contained HTML file (images embedded, no server, no network).

Every section reads its own file; a missing file becomes a visible "missing"
note rather than an error, so a half-finished or crashed run still reports.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dgan.experiment_tables import department_rows, gan_seed_rows

# label_iou, transfer_iou: the nodes' judges (higher is better)
LOSSES = ("d_real", "d_fake", "g_adv", "g_l1", "label_iou", "transfer_iou")


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _fig(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _img(buf.getvalue(), alt)


def _missing(what: str) -> str:
    return f'<p class="missing">missing: {html.escape(what)}</p>'


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _table(rows: list[list[Any]], head: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def config_section(run: dict[str, Any] | None) -> str:
    if not run:
        return _section("config", "Run", _missing("run.json"))
    rows = [[k, v] for k, v in run.items() if not isinstance(v, dict)]
    for group in ("model", "train"):
        rows += [[f"{group}.{k}", v] for k, v in run.get(group, {}).items()]
    nodes = [[n, i.get("feedback", "unknown"), i.get("dataset_size"), i.get("feedbacks"), i.get("samples"),
              "-" if i.get("staleness_mean") is None else f"{i['staleness_mean']:.2f}", i.get("alive_at_end")]
             for n, i in sorted(run.get("nodes", {}).items())]
    return _section("config", "Run", _table(rows, ["setting", "value"]) + "<h3>Nodes</h3>" + _table(
        nodes, ["node", "feedback mode", "pairs", "feedbacks", "samples", "staleness mean", "alive at end"]))


def curves_section(feedback: dict[str, Any] | None) -> str:
    rows = (feedback or {}).get("rows")
    if not rows:
        return _section("losses", "Losses per node", _missing("feedback.json (one row per applied feedback)"))
    cols = feedback["columns"]  # type: ignore[index]
    nodes = sorted({r[cols.index("node")] for r in rows})
    keys = [k for k in LOSSES if k in cols]  # a run from before label_iou has no such column
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(axes, keys, strict=True):
        k = cols.index(key)
        for n in nodes:
            pts = [(r[cols.index("step")], r[k]) for r in rows
                   if r[cols.index("node")] == n and len(r) > k and r[k] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), ".-", markersize=3, linewidth=0.8, label=n)
        ax.set_title(key)
        ax.set_xlabel("generator step")
    axes[0].legend(fontsize=7)
    return _section("losses", "Losses per node", _fig(fig, "loss curves per node"))


def throughput_section(feedback: dict[str, Any] | None) -> str:
    rows = (feedback or {}).get("rows")
    if not rows or len(rows) < 2:
        return _section("throughput", "Throughput", _missing("feedback.json with two or more feedbacks"))
    cols = feedback["columns"]  # type: ignore[index]
    t = np.array([r[cols.index("time")] for r in rows], float)
    n = np.array([r[cols.index("samples")] for r in rows], float)
    bins = np.linspace(t.min(), t.max() + 1e-9, min(40, len(rows)) + 1)
    per_bin, _ = np.histogram(t, bins=bins, weights=n)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot((bins[:-1] + bins[1:]) / 2, per_bin / np.diff(bins), ".-")
    ax.set_xlabel("seconds since the generator started")
    ax.set_ylabel("samples applied / s")
    return _section("throughput", "Throughput", _fig(fig, "throughput over time"))


def staleness_section(run: dict[str, Any] | None) -> str:
    hist = {n: i.get("staleness_hist") for n, i in (run or {}).get("nodes", {}).items() if i.get("staleness_hist")}
    if not hist:
        return _section("staleness", "Staleness", _missing("per-node staleness histogram in run.json"))
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(hist)
    for k, (n, h) in enumerate(sorted(hist.items())):
        xs = sorted(int(x) for x in h)
        ax.bar([x + k * width for x in xs], [h[str(x)] for x in xs], width=width, label=n)
    ax.set_xlabel("generator steps between making fakes and applying their feedback")
    ax.set_ylabel("feedbacks")
    ax.legend(fontsize=7)
    return _section("staleness", "Staleness", _fig(fig, "staleness histogram"))


def samples_section(run_dir: Path) -> str:
    files = sorted((run_dir / "samples").glob("step_*.png"))
    if not files:
        return _section("samples", "Samples across training (mask | synthetic)", _missing("samples/step_*.png"))
    if len(files) > 6:  # first, last and evenly spaced between
        idx = sorted({round(i * (len(files) - 1) / 5) for i in range(6)})
        files = [files[i] for i in idx]
    cells = "".join(f'<figure>{_img(f.read_bytes(), f.stem)}<figcaption>{f.stem}</figcaption></figure>'
                    for f in files)
    return _section("samples", "Samples across training (mask | synthetic)", f'<div class="row">{cells}</div>')


def _claim_figure(c: dict[str, Any]) -> str:
    if "ratios" in c:  # one ratio per GAN seed pair
        return (f"test {', '.join(f'{r:.3f}' for r in c['ratios'])}; validation "
                f"{', '.join(f'{r:.3f}' for r in c['val_ratios'])} (target {c['target']} each, judged on test)"
                + (f"; unpaired GAN seeds {c['unpaired']}" if c.get("unpaired") else ""))
    if "ratio" in c:
        return f"{c['ratio']:.3f} (target {c['target']})"
    if "gains" in c:  # department models against each department's own data
        return (", ".join(f"{n} {g:+.3f}" for n, g in c["gains"].items())
                + f"; mean {c['mean_gain']:+.3f} (targets {c['target_each']:+.2f} each, {c['target_mean']:+.2f} mean)")
    return f"{c['dgan']:.3f} vs {c.get('partial', c.get('other', float('nan'))):.3f}"


def experiment_section(run_dir: Path) -> str:
    results = _load(run_dir / "results.json")
    if not results:
        return _section("experiment", "Experiment", _missing("results.json (run `dgan experiment`)"))
    methods = results.get("methods", {})
    keys = ["iou", "f1", "precision", "recall", "accuracy"]
    rows = [[m, v.get("feedback", "-"), *(f"{v.get(k):.3f}" if isinstance(v.get(k), (int, float)) else "-"
                                           for k in keys)] for m, v in methods.items()]
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(methods)
    ax.bar(names, [methods[m].get("iou", 0) for m in names],
           yerr=[methods[m].get("iou_std", 0) for m in names], capsize=4)
    ax.set_ylabel("building IoU (test)")
    ax.tick_params(axis="x", labelrotation=30)
    grids = "".join(f'<figure>{_img(f.read_bytes(), f.stem)}<figcaption>{f.stem}</figcaption></figure>'
                    for f in sorted((run_dir / "predictions").glob("*.png")))
    claims = [[name, _claim_figure(c), "met" if c["met"] else "missed"]
              for name, c in results.get("claims", {}).items()]
    extra = "".join(f"<p>{html.escape(caption)}</p>{_table(trows, head)}"
                    for caption, head, trows in (gan_seed_rows(methods), department_rows(methods)) if trows)
    body = (_table(rows, ["method", "feedback mode", *keys])
            + (_table(claims, ["claim", "figure", ""]) if claims else "") + extra
            + _fig(fig, "IoU by method")
            + (f'<div class="row">{grids}</div>' if grids else _missing("prediction grids (predictions/*.png)")))
    return _section("experiment", "Experiment", body)


CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}.missing{color:#a60;font-style:italic}
.row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{max-width:100%}figcaption{font-size:12px}"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    run = _load(run_dir / "run.json")
    title = f"dgan report: {run_dir.name}" + (f" (run {run['run_id']})" if run else "")
    feedback = _load(run_dir / "feedback.json")
    body = "".join([config_section(run), curves_section(feedback), staleness_section(run),
                    throughput_section(feedback), samples_section(run_dir), experiment_section(run_dir)])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    out = out or run_dir / "report.html"
    out.write_text(page)
    return out
