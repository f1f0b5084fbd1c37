"""The experiment's claims and its Markdown table (``results.md``), from ``results.json``'s methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from dgan.feedback import DEFAULT_MODE, default_d_steps
from dgan.provenance import describe

PER_SEED_TARGET = 0.9  # issue 13's no-collapse target: DGAN >= 0.9x the central GAN in every GAN seed pair


def per_gan_seed(method: dict[str, Any]) -> dict[int, dict[str, float]]:
    """A GAN method's figures per GAN training: the mean over the segmentation seeds that trained on its set, with
    their range, so that a set's evaluation noise shows apart from the spread between GAN trainings."""
    by: dict[int, list[dict[str, Any]]] = {}
    for r in method.get("seeds", []):
        if isinstance(r.get("gan_seed"), int):
            by.setdefault(r["gan_seed"], []).append(r)
    out: dict[int, dict[str, float]] = {}
    for g, runs in sorted(by.items()):
        val = [float(r["best_val_iou"]) for r in runs if r.get("best_val_iou") is not None]
        test = [float(r["iou"]) for r in runs]
        out[g] = {"n": len(runs), "test": float(np.mean(test)), "test_min": min(test), "test_max": max(test),
                  **({"val_n": len(val), "val": float(np.mean(val)), "val_min": min(val), "val_max": max(val)}
                     if val else {})}
    return out


def _per_seed_claim(dgan: dict[str, Any], central: dict[str, Any]) -> dict[str, Any] | None:
    """DGAN against the central GAN in each GAN seed pair (seed g of one against seed g of the other), judged on
    test IoU as the other claims are; the validation ratios are shown beside. Needs two GAN seeds or more (with one,
    ``dgan_vs_central`` already says it all); a GAN seed of one method without its pair fails the claim."""
    d, c = per_gan_seed(dgan), per_gan_seed(central)
    pairs = sorted(set(d) & set(c))
    if len(set(d) | set(c)) < 2:
        return None
    test = [d[g]["test"] / c[g]["test"] if c[g]["test"] else float("nan") for g in pairs]
    val = [d[g]["val"] / c[g]["val"] if c[g].get("val") and "val" in d[g] else float("nan") for g in pairs]
    unpaired = sorted(set(d) ^ set(c))
    return {"gan_seeds": pairs, "ratios": test, "val_ratios": val, "target": PER_SEED_TARGET, "unpaired": unpaired,
            "met": bool(pairs and not unpaired and all(r >= PER_SEED_TARGET for r in test))}


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
    per_seed = _per_seed_claim(methods["dgan"], methods["central_gan"])
    if per_seed is not None:
        out["dgan_vs_central_per_gan_seed"] = per_seed
    for name, m in methods.items():  # the first feedback mode against each other one, DGAN to DGAN
        if name.startswith("dgan_") and not name.startswith("dgan_sync") and "per_node" not in m \
                and "alternate_of" not in m and "judged_steps" not in m:
            out[f"dgan_vs_{name}"] = {"dgan": d, "other": m["iou"], "met": bool(d >= m["iou"])}
    return out


def jitter_line(config: dict[str, Any]) -> list[str]:
    """The segmenters' photometric jitter, where any is on: real images, GAN sets and department models' synthetic
    stages may each differ in it."""
    real = float(config.get("seg", {}).get("photometric", 0.0))
    synthetic, local = (real if config.get(k) is None else float(config[k])
                        for k in ("synthetic_photometric", "local_photometric"))
    if not (real or synthetic or local):
        return []
    return [f"Segmenters' photometric jitter: {real:g} on real images, {synthetic:g} on a GAN's synthetic set alone, "
            f"{local:g} on the department models' synthetic stage.", ""]


def arithmetic_line(results: dict[str, Any]) -> list[str]:
    """The GANs' precision and G's memory layout where not the default, and the nodes' D steps per feedback where
    not 1 (the central GAN's pace), saying whether they were the nodes' default."""
    precision = results.get("gan_precision", "fp32")
    channels_last = bool(results.get("config", {}).get("channels_last"))
    config = results.get("config", {})
    asked_steps = config.get("d_steps", 1)  # runs from before the setting existed: one
    steps = {fb: default_d_steps(fb) if asked_steps is None else asked_steps
             for fb in config.get("feedback") or [DEFAULT_MODE.value]}
    if len(set(steps.values())) > 1:
        how = "discriminator steps per feedback " + ", ".join(f"{s} in {fb}" for fb, s in steps.items())
    else:
        how = f"{next(iter(steps.values()), asked_steps)} discriminator steps per feedback"
    default = "the nodes' default; " if asked_steps is None else ""
    lines = [f"DGAN nodes: {how} ({default}the central GAN's D: one per generator step).", ""] \
        if set(steps.values()) - {1} else []
    if precision == "fp32" and not channels_last:
        return lines
    asked = results.get("config", {}).get("precision", precision)
    how = f"{precision} (--precision {asked})" if asked != precision else precision
    return [f"GANs in {how}{', G in channels_last' if channels_last else ''}; the segmenters in fp32.", "", *lines]


def provenance_lines(results: dict[str, Any]) -> list[str]:
    """The code that made this run, and the results in it that other code made (or that predate the record): cached
    methods, and GAN trainings loaded from an earlier run."""
    if "code" not in results:
        return []
    now = results["code"]
    other = [f"{name} ({describe(m['made_by'])})" for name, m in results["methods"].items()
             if "made_by" in m and m["made_by"] != now]  # this run's own record is its code, even modified
    other += [f"{name} GAN seed {g} ({describe(made)})" for name, m in results["methods"].items()
              for g, made in enumerate(m.get("gan_made_by") or [])
              if made != now and m.get("made_by", now) == now]  # a method listed whole is not listed per seed
    return [f"Code: {describe(now)}.", "",
            *([f"Read back, made by other code: {'; '.join(other)}.", ""] if other else [])]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# {results['dataset']}, partition {results['partition']}, {results['resolution']} px", "",
             f"Feedback modes: {', '.join(results.get('feedback', []))} (the first is `dgan`/`central_gan`).", "",
             *arithmetic_line(results),
             *provenance_lines(results),
             *jitter_line(results.get("config", {})),
             *(f"**Note:** {n}\n" for n in results.get("notes", [])),
             "| method | feedback | test IoU | val IoU | F1 | precision | recall | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        val = _val(m)
        lines.append(f"| {name} | {m.get('feedback', '-')} | {m['iou']:.3f}{_sd(m)} | "
                     f"{'-' if val is None else f'{val:.3f}'} | {m['f1']:.3f} | {m['precision']:.3f} "
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
    lines += gan_seed_table(results["methods"])
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
    if "dgan_vs_central_per_gan_seed" in cl:
        c = cl["dgan_vs_central_per_gan_seed"]
        lines.append(f"- IoU(dgan) / IoU(central_gan) per GAN seed pair ({', '.join(map(str, c['gan_seeds']))}): "
                     f"test {', '.join(f'{r:.3f}x' for r in c['ratios'])}; validation "
                     f"{', '.join(f'{r:.3f}x' for r in c['val_ratios'])} (target >= {c['target']}x in each pair, "
                     f"judged on test: {'met' if c['met'] else 'missed'})"
                     + (f"; GAN seeds without a pair: {', '.join(map(str, c['unpaired']))}" if c["unpaired"] else ""))
    lines += [f"- IoU(dgan) {c['dgan']:.3f} >= IoU({k[len('dgan_vs_'):]}) {c['other']:.3f}: "
              f"{'met' if c['met'] else 'missed'}" for k, c in cl.items() if "other" in c]
    return "\n".join(lines) + "\n"


def _figure(x: dict[str, float], key: str, count: str) -> str:
    """One of a training's figures (per_gan_seed), with its range where more than one segmenter gave it."""
    if key not in x:
        return "-"
    return f"{x[key]:.3f}" + (f" ({x[key + '_min']:.3f}-{x[key + '_max']:.3f})" if x[count] > 1 else "")


def gan_seed_rows(methods: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Each GAN method per GAN training: validation and test IoU, each the mean over that set's segmentation seeds
    with their range where there are several. (caption, head, rows); no rows without a GAN method."""
    rows = {name: per_gan_seed(m) for name, m in methods.items() if m.get("gan_seconds") or m.get("alternate_of")}
    rows = {name: r for name, r in rows.items() if r}
    if not rows:
        return "", [], []
    seeds = sorted({g for r in rows.values() for g in r})
    n = max(x["n"] for r in rows.values() for x in r.values())

    def cell(x: dict[str, float] | None) -> str:
        return "-" if x is None else f"{_figure(x, 'val', 'val_n')} / {_figure(x, 'test', 'n')}"

    how = "one segmentation seed per set" if n == 1 else \
        f"each the mean over the set's segmentation seeds (up to {n}), with their range"
    return (f"Per GAN training (validation / test IoU; {how}):", ["method", *(f"GAN seed {g}" for g in seeds)],
            [[name, *(cell(r.get(g)) for g in seeds)] for name, r in rows.items()])


def gan_seed_table(methods: dict[str, Any]) -> list[str]:
    caption, head, rows = gan_seed_rows(methods)
    return _markdown_table(caption, head, rows)


def _markdown_table(caption: str, head: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["", caption, "", f"| {' | '.join(head)} |", "|" + "---|" * len(head),
            *(f"| {' | '.join(r)} |" for r in rows)]


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


def _sd(m: dict[str, Any]) -> str:
    return f" ± {m['iou_std']:.3f}" if "iou_std" in m else ""


def _val(m: dict[str, Any]) -> float | None:
    """A method's mean best validation IoU over its segmentation seeds (None where none was validated)."""
    vals = [r["best_val_iou"] for r in m.get("seeds", []) if r.get("best_val_iou") is not None]
    return float(np.mean(vals)) if vals else None


def department_rows(methods: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Per department: its own real pairs alone, the shared synthetic set alone, and both (``dgan_local``; and
    ``central_local`` from the central GAN's set, ``real_local`` from the pooled real pairs); test IoU with the
    validation IoU beside, since a gain on test alone can be one split's luck."""
    if "real_partial" not in methods or "per_node" not in methods["real_partial"]:
        return "", [], []
    local = [k for k in methods if k.startswith(("dgan_local", "central_local", "real_local"))]
    alone = [g for g in ("dgan", *(["central_gan"] if "central_local" in methods else []),
                         *(["real_all"] if "real_local" in methods else [])) if g in methods]
    head = ["department", "real_partial",
            *(f"{g} ({'pooled real' if g == 'real_all' else 'synthetic'} only)" for g in alone), *local]
    rows = []
    for node, m in methods["real_partial"]["per_node"].items():
        own = _val(m)
        cells = [node, f"{m['iou']:.3f}{_sd(m)}" + (f" (val {own:.3f})" if own is not None else "")]
        for g in alone:
            syn = _val(methods[g])
            cells.append(f"{methods[g]['iou']:.3f}" + (f" (val {syn:.3f})" if syn is not None else ""))
        for k in local:
            n = methods[k]["per_node"][node]
            val = _val(n)
            both = f"; val {val:.3f}, {val - own:+.3f}" if val is not None and own is not None else ""
            cells.append(f"{n['iou']:.3f}{_sd(n)} ({n['iou'] - m['iou']:+.3f}{both})")
        rows.append(cells)
    return "Per department (test IoU ± over seeds; validation IoU and the gains on each beside):", head, rows


def department_table(methods: dict[str, Any]) -> list[str]:
    return _markdown_table(*department_rows(methods))
