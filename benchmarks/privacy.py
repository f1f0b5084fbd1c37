"""`dgan bench privacy`: a curious generator against a real node, for every feedback mode.

The victim is the real :class:`~nodes.discriminator_node.DiscriminatorNode` (its
own sampler, flips, D step, float16 gradient, wire codec) over the in-process
transport; the attacker plays the generator's side of the protocol and knows
only what a generator knows: the masks (uploads and requests) and the feedback.

* active: bisection.  Each "fake" is the midpoint of the attacker's per-pixel
  interval for the image the request's mask identifies; the gradient's sign
  halves the interval.  Baseline: each image's mean colour.
* active-descent: the generator's own game against one image, without the
  sign assumption: each "fake" follows the returned gradient (normalised steps,
  shrinking).  It finds whatever the discriminator has learnt of the image
  behind a mask.  Baseline: each image's mean colour.
* passive: honest fakes from a real generator that trains on the feedback;
  the attacker intersects the half-intervals.  Baseline: the fakes themselves.
* passive-robust: the same feedback, with the fewest bounds dropped (up to 3
  per side) that make each pixel's interval hold.  Baseline: the fakes themselves.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dgan import grad_codec
from dgan import protocol as P
from dgan.attacks import (
    TOLERATE,
    DescentEstimate,
    IntervalEstimate,
    canonical,
    flip,
    index_real,
    psnr,
    score,
    to_uint8,
    to_unit,
)
from dgan.feedback import DEFAULT_MODE, FeedbackConfig, FeedbackMode, default_d_steps
from dgan.leakage import class_colours
from dgan.networks import ModelConfig
from dgan.training.generator import GeneratorTrainer, TrainConfig
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import DiscriminatorNode, NodeConfig

DUBAI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dubai_aerial_buildings"


def canonical_mask(mask: np.ndarray) -> np.ndarray:
    key = canonical(mask)
    return np.ascontiguousarray(flip(mask, key[1] if key else 0)).astype(np.int64)


def victim_data(size: int, count: int = 8, data: Path | None = None,
                scenes: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` pairs whose masks identify them (no symmetric or repeated masks, 5-60% buildings)."""
    if data is None and DUBAI.is_dir() and not scenes:
        data = DUBAI
    if data is not None:
        from dgan.data.loaders import load_pairs_folder

        pairs = load_pairs_folder(data, size)
        images, masks, source = pairs.images, pairs.masks, f"{data.name} ({len(pairs)} patches)"
    else:
        from dgan.data.scenes import make_scenes

        images, masks = make_scenes(range(200), size)
        source = "built-in scenes"
    picked: list[int] = []
    keys: set[bytes] = set()
    for i, m in enumerate(masks):
        canon = canonical(m)
        if canon is None or canon[0] in keys or not 0.05 <= float((m > 0).mean()) <= 0.6:
            continue
        keys.add(canon[0])
        picked.append(i)
        if len(picked) == count:
            break
    if len(picked) < count:
        raise ValueError(f"only {len(picked)} identifiable pairs in {source}")
    return images[picked], masks[picked], source


STRATEGIES = ("active", "active-descent", "passive")


@dataclass
class AttackResult:
    estimates: dict[bytes, IntervalEstimate]
    descents: dict[bytes, DescentEstimate]
    agree: list[float]  # per update: share of pixels with sign(grad) == sign(fake - real)
    batches: int
    wire_dtypes: set[str]  # the dtypes of the gradients the node actually sent
    d_steps: float  # measured: the victim D's optimiser steps (warm-up aside) per feedback it sent


def attack(mode: FeedbackMode, images: np.ndarray, masks: np.ndarray, model: ModelConfig, queries: int,
           strategy: str, seed: int = 0, timeout: float = 60.0, grad_dtype: str = "float16",
           lambda_colour: float = 0.0) -> AttackResult:
    """Play the generator against a real node until every image has had ``queries`` feedbacks."""
    hub = InProcessHub()
    gen_link, node_link = hub.generator_link(), hub.node_link("victim")
    recipe = FeedbackConfig(mode, lambda_colour=lambda_colour, d_steps=default_d_steps(mode))  # a default node
    node_link.send(P.make(P.Kind.HELLO, "victim", meta={"role": "node", **DiscriminatorNode.hello_meta(images,
                                                                                                     recipe)}))
    node = DiscriminatorNode(node_link, images, masks, NodeConfig("victim", batch_size=8, pipeline=2, seed=seed,
                                                                  feedback=recipe, grad_dtype=grad_dtype))
    stop = threading.Event()
    thread = threading.Thread(target=node.run, args=(stop,), daemon=True)
    thread.start()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown attack {strategy!r}: one of {STRATEGIES}")
    honest = GeneratorTrainer(model, TrainConfig(seed=seed, fake_dtype="float32")) if strategy == "passive" else None
    # What the bench (not the attacker) knows: the real image behind each mask key, to score sign agreement.
    truth = {k: v.transpose(2, 0, 1) / 127.5 - 1 for k, v in index_real(images, masks).items()}
    known: set[bytes] = set()  # the attacker's own index: the node's uploaded masks
    estimates: dict[bytes, IntervalEstimate] = {}
    tolerate = TOLERATE if strategy == "passive" else 0  # only the passive rows read the robust bounds
    descents: dict[bytes, DescentEstimate] = {}
    sent: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    agree: list[float] = []
    wire_dtypes: set[str] = set()
    batches = 0
    max_batches = 8 * queries * len(images) // 8 + 40
    try:
        gen_link.send("victim", P.make(P.Kind.WELCOME, "generator", run_id="attack", meta={"config": {
            "model": model.to_dict(), "fake_dtype": "float32", "max_batch": 64, "need_masks": True}}))
        while batches < max_batches and (len(estimates) < len(known) or not known or
                                         min(e.queries for e in estimates.values()) < queries):
            got = gen_link.recv(timeout)
            if got is None:
                raise TimeoutError(f"the node sent nothing for {timeout:.0f} s")
            msg = got[1]
            if msg.kind == P.Kind.MASKS:
                known.update(c[0] for c in map(canonical, msg.tensors["masks"]) if c is not None)
            elif msg.kind == P.Kind.FAKE_REQUEST:
                req = np.array(msg.tensors["masks"])
                reply = P.make(P.Kind.FAKES, "generator", run_id="attack", reply_to=msg.msg_id)
                if honest is not None:
                    fakes = honest.generate("victim", reply.msg_id, req, request_id=msg.msg_id)
                else:
                    fakes = np.zeros((len(req), 3, *req.shape[1:]), np.float32)
                    for j, m in enumerate(req):
                        canon = canonical(m)
                        if canon is not None and canon[0] in known:
                            est = estimates.setdefault(canon[0], IntervalEstimate((3, *req.shape[1:]), tolerate))
                            walk = descents.setdefault(canon[0], DescentEstimate((3, *req.shape[1:])))
                            fakes[j] = flip(walk.current if strategy == "active-descent" else est.midpoint(),
                                            canon[1])
                sent[reply.msg_id] = (req, fakes)
                reply.tensors["fakes"] = fakes
                gen_link.send("victim", reply)
            elif msg.kind == P.Kind.FEEDBACK and msg.reply_to in sent:
                req, fakes = sent.pop(msg.reply_to)
                wire_dtypes.add(str(np.asarray(msg.tensors["grad"]).dtype))
                grads = grad_codec.decode(msg.tensors["grad"], msg.tensors.get("grad_scales"))  # int8 nodes too
                batches += 1
                if honest is not None:
                    honest.apply_feedback("victim", msg.reply_to, grads, float(msg.meta["grad_scale"]))
                    honest.update()
                for m, f, g in zip(req, to_unit(fakes), grads, strict=True):
                    canon = canonical(m)
                    if canon is None or canon[0] not in known:
                        continue
                    est = estimates.setdefault(canon[0], IntervalEstimate(f.shape, tolerate))
                    if est.queries >= queries:
                        continue
                    fc, gc = flip(f, canon[1]), flip(g, canon[1])
                    nz = gc != 0
                    agree.append(float((np.sign(gc) == np.sign(fc - truth[canon[0]]))[nz].mean()) if nz.any()
                                 else 0.5)
                    est.update(fc, gc)
                    if canon[0] in descents:
                        descents[canon[0]].update(gc)
    finally:
        stop.set()
        thread.join(30)
    return AttackResult(estimates, descents, agree, batches, wire_dtypes, _d_steps_per_feedback(node))


def _d_steps_per_feedback(node: DiscriminatorNode) -> float:
    """What the victim did, not what it was told: its D optimiser's step count (Adam keeps one per parameter),
    less a segmenting D's warm-up steps on its own pairs, over the feedbacks it sent."""
    trainer = node.trainer
    if trainer is None or not node.stats.batches:
        return float("nan")
    steps = max((float(st["step"]) for st in trainer.opt.state.values() if "step" in st), default=0.0)
    warm = trainer.warmup_steps if trainer.segmenting else 0  # the semantic mode warms its own segmenter
    return (steps - warm) / node.stats.batches


def attack_row(mode: FeedbackMode, images: np.ndarray, masks: np.ndarray, model: ModelConfig, queries: int,
               strategy: str, seed: int, grad_dtype: str = "float16", lambda_colour: float = 0.0) -> dict[str, Any]:
    return attack_rows(mode, images, masks, model, queries, strategy, seed, grad_dtype, lambda_colour)[0]


def attack_rows(mode: FeedbackMode, images: np.ndarray, masks: np.ndarray, model: ModelConfig, queries: int,
                strategy: str, seed: int, grad_dtype: str = "float16",
                lambda_colour: float = 0.0) -> list[dict[str, Any]]:
    """One row per estimate the attack yields: the passive run gives two (``passive``, the intervals, and
    ``passive-robust``, which drops a few wrong signs), from the same feedback."""
    t0 = time.perf_counter()
    res = attack(mode, images, masks, model, queries, strategy, seed, grad_dtype=grad_dtype,
                 lambda_colour=lambda_colour)
    seconds = time.perf_counter() - t0
    names = ["passive", "passive-robust"] if strategy == "passive" else [strategy]
    return [_row(name, mode, images, masks, queries, res, grad_dtype, lambda_colour, seconds) for name in names]


def _row(strategy: str, mode: FeedbackMode, images: np.ndarray, masks: np.ndarray, queries: int,
         res: AttackResult, grad_dtype: str, lambda_colour: float, seconds: float) -> dict[str, Any]:
    real = index_real(images, masks)  # victim_data's masks are identifying: every pair is indexed
    guess = {"active": lambda k, e: e.midpoint(), "passive": lambda k, e: e.passive(),
             "passive-robust": lambda k, e: e.robust(),
             "active-descent": lambda k, e: res.descents[k].current}[strategy]
    rows = [(to_uint8(guess(k, e)), to_uint8(e.mean_fake()), real[k], e.queries, e.consistency())
            for k, e in res.estimates.items() if e.queries]
    s = score(rows)
    colours = class_colours(images, masks)  # the mask-aware guess: each class's mean colour, painted on the mask
    painted = [(to_uint8(np.transpose(colours[canonical_mask(m)], (2, 0, 1))), real[canonical(m)[0]])
               for m in masks]
    class_psnr = float(np.mean([psnr(e, r) for e, r in painted]))
    active = not strategy.startswith("passive")
    baseline = s.mean_colour_psnr_db if active else s.fakes_psnr_db
    return {"mode": mode.value, "attack": strategy, "queries": queries, "grad_dtype": grad_dtype,
            "lambda_colour": lambda_colour, "d_steps": res.d_steps,
            "wire_grad_dtypes": sorted(res.wire_dtypes),
            "psnr_db": s.psnr_db, "ssim": s.ssim, "baseline_psnr_db": baseline,
            "baseline": "mean colour" if active else "the fakes", "mean_colour_psnr_db": s.mean_colour_psnr_db,
            "class_colour_psnr_db": class_psnr,
            "fakes_psnr_db": s.fakes_psnr_db, "fakes_ssim": s.fakes_ssim,
            "sign_agreement": float(np.mean(res.agree)) if res.agree else float("nan"), "images": s.images,
            "node_batches": res.batches, "seconds": seconds}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for the default mode (active <= mean colour + 1 dB; passive <= the fakes), and a sign
    that agrees with fake - real no more than chance (within 0.02)."""
    out = {}
    for r in rows:
        if r["mode"] != DEFAULT_MODE.value:
            continue
        limit = r["baseline_psnr_db"] + (0.0 if r["attack"].startswith("passive") else 1.0)
        chance = abs(r["sign_agreement"] - 0.5) < 0.02
        out[f"{r['attack']}_q{r['queries']}"] = {"psnr_db": r["psnr_db"], "limit_db": limit,
                                                 "sign_agreement": r["sign_agreement"],
                                                 "met": bool(r["psnr_db"] <= limit and chance)}
    return out


def run_privacy_benchmark(quick: bool, json_out: Path | None, data: Path | None = None,
                          seed: int = 0, grad_dtype: str = "float16", lambda_colour: float = 0.0,
                          modes: list[FeedbackMode] | None = None) -> dict[str, Any]:
    console = Console(width=max(120, Console().width))
    torch.set_num_threads(2)
    size, width = (64, 16) if quick else (128, 32)
    model = ModelConfig(image_size=size, g_width=width, d_width=width)
    images, masks, source = victim_data(size, data=data)
    plans = ([(8, "active"), (8, "passive")] if quick else
             [(8, "active"), (32, "active"), (32, "active-descent"), (8, "passive")])
    rows = []
    for mode in modes or list(FeedbackMode):
        for queries, strategy in plans:
            with console.status(f"{mode.value}: {strategy} attack, {queries} queries/image…"):
                rows.extend(attack_rows(mode, images, masks, model, queries, strategy, seed, grad_dtype,
                                        lambda_colour))
    result = {"image_size": size, "width": width, "images": len(images), "data": source, "quick": quick,
              "grad_dtype": grad_dtype, "lambda_colour": lambda_colour, "default_mode": DEFAULT_MODE.value,
              "rows": rows, "targets": targets(rows)}
    colour = f", --lambda-colour {lambda_colour:g}" if lambda_colour else ""
    table = Table(title=f"Reconstruction by a curious generator: {len(images)} private images at {size} px "
                        f"({source}; {grad_dtype} gradients on the wire{colour})")
    for col in ("mode", "D steps", "attack", "queries/image", "PSNR dB", "SSIM", "baseline", "baseline dB",
                "class colours dB", "sign agreement", "s"):
        text = col in ("mode", "attack", "baseline")
        table.add_column(col, justify="left" if text else "right", no_wrap=text)  # names whole, figures may wrap
    for r in rows:
        style = "red" if r["psnr_db"] > r["baseline_psnr_db"] + 1 else ""
        psnr_text = f"[{style}]{r['psnr_db']:.1f}[/{style}]" if style else f"{r['psnr_db']:.1f}"
        table.add_row(r["mode"], str(r["d_steps"]), r["attack"], str(r["queries"]), psnr_text, f"{r['ssim']:.3f}",
                      r["baseline"], f"{r['baseline_psnr_db']:.1f}", f"{r['class_colour_psnr_db']:.1f}",
                      f"{r['sign_agreement']:.3f}", f"{r['seconds']:.0f}")
    console.print(table)
    for name, t in result["targets"].items():
        console.print(f"default mode {DEFAULT_MODE.value}, {name}: {t['psnr_db']:.1f} dB vs limit {t['limit_db']:.1f}"
                      f" dB, sign agreement {t['sign_agreement']:.3f}: {'met' if t['met'] else 'MISSED'}")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
