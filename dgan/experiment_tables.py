"""The experiment's claims and its Markdown table (``results.md``), from ``results.json``'s methods."""

from __future__ import annotations

from typing import Any

import numpy as np


def claims(methods: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "dgan_local" in methods:  # each department: its own pairs plus the synthetic set, against its own alone
        gains = {n: methods["dgan_local"]["per_node"][n]["iou"] - m["iou"]
                 for n, m in methods["real_partial"]["per_node"].items()}
        out["dgan_local_vs_real_partial"] = {
            "gains": gains, "mean_gain": float(np.mean(list(gains.values()))), "target_each": 0.03,
            "target_mean": 0.05, "met": bool(min(gains.values()) >= 0.03 and np.mean(list(gains.values())) >= 0.05)}
    if "dgan" not in methods or "central_gan" not in methods:
        return out
    d, c, a, p = (methods[k]["iou"] for k in ("dgan", "central_gan", "real_all", "real_partial"))
    out.update({
        "dgan_vs_central": {"ratio": d / c if c else float("nan"), "target": 0.95, "met": bool(c and d / c >= 0.95)},
        "dgan_vs_partial_mean": {"dgan": d, "partial": p, "met": bool(d > p)},
        "dgan_vs_real_all": {"ratio": d / a if a else float("nan"), "target": 0.85, "met": bool(a and d / a >= 0.85)}})
    for name, m in methods.items():  # the first feedback mode against each other one, DGAN to DGAN
        if name.startswith("dgan_") and not name.startswith("dgan_sync") and "per_node" not in m \
                and "alternate_of" not in m and "judged_steps" not in m:
            out[f"dgan_vs_{name}"] = {"dgan": d, "other": m["iou"], "met": bool(d >= m["iou"])}
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# {results['dataset']}, partition {results['partition']}, {results['resolution']} px", "",
             f"Feedback modes: {', '.join(results.get('feedback', []))} (the first is `dgan`/`central_gan`).", "",
             "| method | feedback | test IoU | val IoU | F1 | precision | recall | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        sd = f" ± {m['iou_std']:.3f}" if "iou_std" in m else ""
        val = [r.get("best_val_iou") for r in m.get("seeds", []) if r.get("best_val_iou") is not None]
        lines.append(f"| {name} | {m.get('feedback', '-')} | {m['iou']:.3f}{sd} | "
                     f"{f'{np.mean(val):.3f}' if val else '-'} | {m['f1']:.3f} | {m['precision']:.3f} "
                     f"| {m['recall']:.3f} | {m['accuracy']:.3f} |")
    for name, m in results["methods"].items():
        if "judged_steps" in m:
            at = ", ".join("none (no transfer_iou window yet: dgan's own weights)" if s is None else str(s)
                           for s in m["judged_steps"])
            lines += ["", f"- {name}: the same GAN trainings' sets, from the raw weights where the nodes' "
                          f"transfer_iou peaked (step per GAN seed: {at})"]
        elif m.get("alternate_of") and name.endswith("_last"):
            lines += ["", f"- {name}: the same GAN trainings as {m['alternate_of']}, their sets from the last weights "
                          "alone (beside the snapshots)"]
        elif m.get("alternate_of") and name.endswith("_ema"):
            lines += ["", f"- {name}: the same GAN trainings as {m['alternate_of']}, their sets from the moving "
                          "average of their weights (beside the snapshots)"]
    trained = [(name, m) for name, m in results["methods"].items() if m.get("gan_seconds")]
    if trained:
        lines.append("")
    for name, m in trained:
        reused = m.get("gan_reused") or [False] * len(m["gan_seconds"])
        lines.append(f"- {name}: GAN training seconds per GAN seed: " + ", ".join(
            f"{s:.0f}{' (loaded: a finished training with the same settings)' if r else ''}"
            for s, r in zip(m["gan_seconds"], reused, strict=True))
            + (f"; synthesised from: {'; '.join(m['synthesis_weights'])}" if m.get("synthesis_weights") else ""))
    lines += class_table(results["methods"])
    lines += department_table(results["methods"])
    cl = results["claims"]
    lines.append("")
    if "dgan_local_vs_real_partial" in cl:
        c = cl["dgan_local_vs_real_partial"]
        lines.append(f"- dgan_local - real_partial per department: "
                     f"{', '.join(f'{n} {g:+.3f}' for n, g in c['gains'].items())}; mean {c['mean_gain']:+.3f} "
                     f"(targets >= +0.03 each, >= +0.05 mean: {'met' if c['met'] else 'missed'})")
    if "dgan_vs_central" not in cl:
        return "\n".join(lines) + "\n"
    lines += [f"- IoU(dgan) / IoU(central_gan) = {cl['dgan_vs_central']['ratio']:.3f} (target >= 0.95: "
              f"{'met' if cl['dgan_vs_central']['met'] else 'missed'})",
              f"- IoU(dgan) {cl['dgan_vs_partial_mean']['dgan']:.3f} vs real_partial mean "
              f"{cl['dgan_vs_partial_mean']['partial']:.3f} "
              f"({'met' if cl['dgan_vs_partial_mean']['met'] else 'missed'})",
              f"- IoU(dgan) / IoU(real_all) = {cl['dgan_vs_real_all']['ratio']:.3f} (target >= 0.85: "
              f"{'met' if cl['dgan_vs_real_all']['met'] else 'missed'})"]
    lines += [f"- IoU(dgan) {c['dgan']:.3f} >= IoU({k[len('dgan_vs_'):]}) {c['other']:.3f}: "
              f"{'met' if c['met'] else 'missed'}" for k, c in cl.items() if "other" in c]
    return "\n".join(lines) + "\n"


def class_table(methods: dict[str, Any]) -> list[str]:
    """More than two classes: each class's test IoU and the mIoU (the table above shows the foreground mean)."""
    first = next(iter(methods.values()), {})
    names = [k[len("iou_"):] for k in first if k.startswith("iou_") and k != "iou_per_image" and
             not k.endswith("_std")]
    if not names:
        return []
    lines = ["", "Per class (test IoU; mIoU over every class, background included):", "",
             f"| method | {' | '.join(names)} | mIoU |", "|---|" + "---|" * (len(names) + 1)]
    for name, m in methods.items():
        if "miou" in m:
            cells = " | ".join(f"{m['iou_' + c]:.3f}" for c in names)
            lines.append(f"| {name} | {cells} | {m['miou']:.3f} |")
    return lines


def department_table(methods: dict[str, Any]) -> list[str]:
    """Per department: its own real pairs alone, the shared synthetic set alone, and both (``dgan_local``)."""
    local = [k for k in methods if k.startswith("dgan_local")]
    head = ["real_partial", *(["dgan (synthetic only)"] if "dgan" in methods else []), *local]
    lines = ["", "Per department (test IoU):", "", f"| department | {' | '.join(head)} |",
             "|---|" + "---|" * len(head)]
    for node, m in methods["real_partial"]["per_node"].items():
        cells = [f"{m['iou']:.3f} ± {m['iou_std']:.3f}"]
        if "dgan" in methods:
            cells.append(f"{methods['dgan']['iou']:.3f}")
        for k in local:
            n = methods[k]["per_node"][node]
            cells.append(f"{n['iou']:.3f} ± {n['iou_std']:.3f} ({n['iou'] - m['iou']:+.3f})")
        lines.append(f"| {node} | {' | '.join(cells)} |")
    return lines
