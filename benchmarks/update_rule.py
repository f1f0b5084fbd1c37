"""Which generator update rule gives the best GAN per feedback: `dgan bench update-rule`.

Issue 13's suspect is the async rule: every generator step follows one node's
discriminator, about 7 steps stale (4 nodes x pipeline 2).  This benchmark
replays the schedule in one process, deterministically, with the real
:class:`GeneratorTrainer` (delayed-gradient backprop through the graph that made
each request's fakes) and the real :class:`DiscriminatorTrainer` of each node, on
the experiment's own splits and node partition (and, for the wire's
encodings, with the gradients and fakes encoded as the wire carries them).  Nodes answer in the order their
simulated speeds give, so staleness arises exactly as it does over the wire, but
no socket, process or machine load changes the order.

Every rule gets the same number of feedbacks (the same generator and node work);
quality is the validation IoU of a segmenter trained on the GAN's synthetic
images (never the test split), for the raw weights, their EMA and G's snapshots.  The
`real` rules run the same training for real (:mod:`benchmarks.real_rule`), one at a
time after the simulations, and add the nodes' judges' late verdicts: `real` as the
simulations first measured dgan (two requests in flight, the last weights), `real-p1`
as `dgan experiment` runs it (one in flight, snapshots; its simulated twin is `async-p1-f16`).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.real_rule import REAL_PIPELINE, judge_agreement, real_row, score_weights
from dgan.experiment import ExperimentConfig, Splits, make_splits
from dgan.malloc_tuning import tune_malloc
from dgan.stop_signals import die_with_parent
from dgan.training.discriminator import DiscriminatorTrainer, PairSampler
from dgan.training.generator import GeneratorTrainer, Outcome, TrainConfig
from dgan.training.snapshots import relative_distance
from dgan.training.staleness import stale_weight
from nodes.round_policy import RoundPolicy

log = logging.getLogger("dgan.bench")

# G's weights kept over the second half of each training (as `dgan experiment --snapshots 4`): the set they
# synthesise together is the third figure of every row, beside the raw and the EMA weights
SNAPSHOTS = 4


@dataclass(frozen=True)
class Rule:
    name: str
    mode: str  # "async", "sync", "serial" (one request in flight, nodes in turn) or "central" (one pooled D)
    update_every: int  # async: feedbacks per step; 0 = one per node (buffered)
    pipeline: int  # requests each node keeps in flight
    lr_scale: float = 1.0  # the generator's learning rate times this
    beta1: float | None = None  # the generator's Adam beta1 (None: the experiment's)
    grad_dtype: str = "float32"  # the nodes' gradients as the wire would carry them
    fake_dtype: str = "float32"  # the generator's fakes as the wire would carry them
    precision: str = "fp32"  # the generator's forward pass (TrainConfig.precision)
    node_precision: str = "fp32"  # the nodes' D and segmenter passes (DiscriminatorTrainer's precision)
    channels_last: bool = False  # G's weights and inputs in NHWC (TrainConfig.channels_last)
    jacobian: str = "made"  # TrainConfig.jacobian: backprop through the weights that made the fakes, or the current
    weighting: str = "size"  # each feedback's weight: its node's dataset size over the mean (dgan's), or "equal"
    snapshots: int = SNAPSHOTS  # G's snapshots kept (every simulation keeps them; the `real` rule does not)
    d_steps: int = 1  # each node's D steps per feedback (FeedbackConfig.d_steps): fresh real batches, same fakes
    max_staleness: int = 10**6  # TrainConfig.max_staleness: no bound, unless a rule measures the bound itself
    stale_policy: str = "drop"  # TrainConfig.stale_policy: past the bound, drop or discount


RULES = {
    "async": Rule("async", "async", 1, 2),  # dgan's rule before this benchmark
    "async-p1": Rule("async-p1", "async", 1, 1),  # the same with half the staleness
    "buffered": Rule("buffered", "async", 0, 2),  # FedBuff: one step per N feedbacks from any nodes
    "buffered-lr2": Rule("buffered-lr2", "async", 0, 2, 2.0),  # as many parameter moves per feedback as async
    "sync": Rule("sync", "sync", 0, 1),  # AsynDGAN rounds: every node once per step
    "central": Rule("central", "central", 1, 1),  # one D on the pooled pairs (the centralized GAN)
    # the wire's encodings, paired with "async" (same seeds, same schedule: only the encoding differs)
    "async-f16": Rule("async-f16", "async", 1, 2, grad_dtype="float16", fake_dtype="float16"),  # dgan's default
    "async-int8": Rule("async-int8", "async", 1, 2, grad_dtype="int8", fake_dtype="uint8"),  # the smallest
    # paired with "async-f16": the generator's forward under bf16 autocast (fast only on native-bf16 CPUs)
    "async-f16-bf16": Rule("async-f16-bf16", "async", 1, 2, grad_dtype="float16", fake_dtype="float16",
                           precision="bf16"),
    "async-f16-bf16-all": Rule("async-f16-bf16-all", "async", 1, 2, grad_dtype="float16", fake_dtype="float16",
                               precision="bf16", node_precision="bf16"),  # and the nodes too
    # paired with "async-p1-f16" (`dgan experiment`'s twin): every process in bf16 and G in NHWC, the fastest
    # generator on a CPU with AMX (`dgan bench speed`)
    "async-p1-f16-bf16-cl": Rule("async-p1-f16-bf16-cl", "async", 1, 1, grad_dtype="float16", fake_dtype="float16",
                                 precision="bf16", node_precision="bf16", channels_last=True),
    # issue 13's two suspects apart, paired with "async-f16" and "central": staleness without the split D, and
    # the split D without staleness
    "central-p8": Rule("central-p8", "central", 1, 8, grad_dtype="float16", fake_dtype="float16"),  # staleness 7
    # node Ds, staleness 0; nodes strictly in turn, whatever their speeds
    "serial": Rule("serial", "serial", 1, 1, grad_dtype="float16", fake_dtype="float16"),
    # fixes for the staleness, paired with "async-f16": staleness acts as momentum (Mitliagkas et al. 2016,
    # "Asynchrony begets momentum"), so drop Adam's own; or take smaller steps
    "async-b0": Rule("async-b0", "async", 1, 2, grad_dtype="float16", fake_dtype="float16", beta1=0.0),
    "async-lr05": Rule("async-lr05", "async", 1, 2, 0.5, grad_dtype="float16", fake_dtype="float16"),
    "buffered-f16": Rule("buffered-f16", "async", 0, 2, grad_dtype="float16", fake_dtype="float16"),
    # half the staleness, paired with "async-f16": one request in flight per node (pipeline 1, dgan node --pipeline 1)
    "async-p1-f16": Rule("async-p1-f16", "async", 1, 1, grad_dtype="float16", fake_dtype="float16"),
    # delay compensation, paired with "async-f16": the stale feedback goes through G's current weights
    "async-jc": Rule("async-jc", "async", 1, 2, grad_dtype="float16", fake_dtype="float16", jacobian="current"),
    # paired with "async-p1-f16": every node's feedback weighs the same (dgan generator --weighting equal); on tile 8
    # the one building-rich node holds 98 of 886 pairs, so size weights shrink the steps that teach buildings
    "async-p1-eq": Rule("async-p1-eq", "async", 1, 1, grad_dtype="float16", fake_dtype="float16", weighting="equal"),
    # paired with "async-p1-f16": each node's D steps as often as G does (4 nodes in turn: 4 per feedback), as the
    # central GAN's D; on `iid` every G step moves the fakes all four Ds judge, while each D stepped once per four
    "async-p1-d4": Rule("async-p1-d4", "async", 1, 1, grad_dtype="float16", fake_dtype="float16", d_steps=4),
    "async-p1-d2": Rule("async-p1-d2", "async", 1, 1, grad_dtype="float16", fake_dtype="float16", d_steps=2),
    "central-d4": Rule("central-d4", "central", 1, 1, d_steps=4),  # paired with "central": does the pooled D gain too?
    # paired with "serial" and "async-p1-d4": staleness 0, and each D (of 4 nodes in turn) as many steps as G
    "serial-d4": Rule("serial-d4", "serial", 1, 1, grad_dtype="float16", fake_dtype="float16", d_steps=4),
    # the generator's staleness bound itself, paired with "async-f16" (no bound): with a slow node (--speed 1
    # --speed 1 --speed 1 --speed 2.5) the bound drops nearly all that node's feedbacks, or discounts them
    "async-f16-bound8": Rule("async-f16-bound8", "async", 1, 2, grad_dtype="float16", fake_dtype="float16",
                             max_staleness=8),
    "async-f16-discount8": Rule("async-f16-discount8", "async", 1, 2, grad_dtype="float16", fake_dtype="float16",
                                max_staleness=8, stale_policy="discount"),
    # not simulated: a real run (broker, node processes, this machine's timing), dgan's default wire
    "real": Rule("real", "real", 1, REAL_PIPELINE, grad_dtype="float16", fake_dtype="float16", snapshots=0),
    # the same as `dgan experiment` runs it since session 20: one request in flight, 4 snapshots (twin: async-p1-f16)
    "real-p1": Rule("real-p1", "real", 1, 1, grad_dtype="float16", fake_dtype="float16"),
}


def simulate(cfg: ExperimentConfig, splits: Splits, rule: Rule, seed: int, feedbacks: int, feedback: str,
             speeds: list[float], ema: float) -> tuple[GeneratorTrainer, dict[str, Any]]:
    """Train a generator on ``feedbacks`` node answers under ``rule``; returns it and its staleness figures."""
    lr, beta1 = cfg.generator_optim()
    beta1 = beta1 if rule.beta1 is None else rule.beta1
    # serial and central step once per feedback, the async and sync rules as the real generator does
    steps = feedbacks if rule.mode in ("serial", "central") else cfg.generator_steps(feedbacks, rule.mode,
                                                                                        rule.update_every)
    gen = GeneratorTrainer(cfg.model(), TrainConfig(steps=steps, lr=lr * rule.lr_scale, beta1=beta1, seed=seed,
                                                    fake_dtype=rule.fake_dtype, ema=ema,
                                                    max_staleness=rule.max_staleness, stale_policy=rule.stale_policy,
                                                    precision=rule.precision, jacobian=rule.jacobian,
                                                    channels_last=rule.channels_last,
                                                    **replace(cfg, snapshots=rule.snapshots).snapshot_args(steps)))
    parts = [list(range(len(splits.train)))] if rule.mode == "central" else splits.node_parts
    names = [f"node{i}" for i in range(len(parts))]
    nodes = []
    for i, part in enumerate(parts):
        sub = splits.train.subset(part)
        recipe = replace(cfg.recipe(feedback), d_steps=rule.d_steps)
        disc = DiscriminatorTrainer(cfg.model(), recipe, seed=seed * 100 + i, precision=rule.node_precision)
        disc.set_colour_stats(sub.images, sub.masks)  # each node's own, as a node process (central: the pooled)
        sampler = PairSampler(sub.images, sub.masks, cfg.size, seed=seed * 100 + i)
        for _ in range(disc.warmup_steps):
            disc.warm_up(*reversed(sampler.batch(cfg.batch_size)))
        nodes.append((disc, sampler, len(sub)))
    mean_size = float(np.mean([n[2] for n in nodes]))
    weights = [n[2] / mean_size if rule.weighting == "size" else 1.0 for n in nodes]  # as the service weighs them
    policy = RoundPolicy("sync" if rule.mode == "sync" else "async", rule.update_every)
    for name in names:
        policy.request(name, None)  # every node is a member from the start
    staleness: list[int] = []
    served = dict.fromkeys(names, 0)  # feedbacks each node answered
    applied = dict.fromkeys(names, 0.0)  # their weight as applied: 1 each, less when discounted, 0 when dropped
    heap: list[tuple[float, int, int, np.ndarray, np.ndarray, np.ndarray]] = []
    busy = [0.0] * len(nodes)
    key = 0

    def send(i: int, now: float) -> None:
        nonlocal key
        key += 1
        reals, masks = nodes[i][1].batch(cfg.batch_size)
        fakes = gen.generate(names[i], key, masks, request_id=key)
        busy[i] = max(now, busy[i]) + speeds[i % len(speeds)]
        heapq.heappush(heap, (busy[i], key, i, masks, reals, fakes))

    def answer(k: int, i: int, masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray) -> None:
        more = [nodes[i][1].batch(cfg.batch_size)[::-1] for _ in range(rule.d_steps - 1)]  # (masks, reals) each
        scored = nodes[i][0].score(masks, reals, fakes, rule.grad_dtype, more)
        served[names[i]] += 1
        outcome, s, _ = gen.apply_feedback(names[i], k, scored.grad, scored.grad_scale, weights[i],
                                           scored.grad_scales)
        if outcome in (Outcome.APPLIED, Outcome.DISCOUNTED):
            staleness.append(s)
            applied[names[i]] += stale_weight(s, rule.max_staleness, rule.stale_policy) or 0.0

    done = 0
    if rule.mode == "sync":
        while done < feedbacks:
            for i in range(len(nodes)):  # one round: every node's fakes from the same weights
                send(i, 0.0)
            while heap:
                _, k, i, masks, reals, fakes = heapq.heappop(heap)
                answer(k, i, masks, reals, fakes)
                done += 1
            gen.update()
    elif rule.mode == "serial":
        while done < feedbacks:  # the nodes in turn, each answering fakes from the latest weights
            send(done % len(nodes), 0.0)
            _, k, i, masks, reals, fakes = heapq.heappop(heap)
            answer(k, i, masks, reals, fakes)
            done += 1
            gen.update()
    else:
        for i in range(len(nodes)):
            for _ in range(rule.pipeline):
                send(i, 0.0)
        while done < feedbacks:
            t, k, i, masks, reals, fakes = heapq.heappop(heap)
            answer(k, i, masks, reals, fakes)
            done += 1
            if policy.feedback(names[i], gen.pending):
                gen.update()
            send(i, t)
    gen.update()
    drift = gen.snaps.drift(gen.step, gen.G)
    ema_gap = relative_distance(gen.G_ema.state_dict(), gen.G.state_dict()) if gen.G_ema is not None else None
    return gen, {"steps": gen.step, "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                 "staleness_max": max(staleness, default=0), "served": served,
                 "applied_weight": {n: round(w, 2) for n, w in applied.items()},
                 "snapshot_drift": None if drift is None else round(drift, 4),
                 "ema_gap": None if ema_gap is None else round(ema_gap, 4)}


def _one(args: tuple[ExperimentConfig, str, int, int, str, list[float], float, int, int]) -> dict[str, Any]:
    cfg, rule_name, seed, feedbacks, feedback, speeds, ema, seg_steps, seg_seeds = args
    torch.set_num_threads(1)
    splits = make_splits(cfg)
    t0 = time.perf_counter()
    gen, stats = simulate(cfg, splits, RULES[rule_name], seed, feedbacks, feedback, speeds, ema)
    gan_s = time.perf_counter() - t0
    row = {"rule": rule_name, "test": cfg.test, "gan_seed": seed, "feedbacks": feedbacks,
           "gan_seconds": round(gan_s, 1), **stats}
    row.update(score_weights(gen, splits, cfg.samples_per_mask, ("raw", "ema", "snapshots"), seg_steps, seg_seeds))
    log.info("%s", row)
    return row


def gan_seed_range(first_seed: int, gan_seeds: int) -> range:
    """The GAN seeds of a run: a later run can add seeds to an earlier one's (the simulation is deterministic)."""
    if first_seed < 0 or gan_seeds < 1:
        raise ValueError(f"need --first-seed >= 0 and --gan-seeds >= 1, got {first_seed} and {gan_seeds}")
    return range(first_seed, first_seed + gan_seeds)


def _worker_start(parent: int) -> None:
    """A pool worker ends with the benchmark, and allocates as a ``dgan`` command does (same results, faster)."""
    die_with_parent(parent)
    tune_malloc()


def run_update_rule_benchmark(data: Path | None, quick: bool, json_out: Path | None, rules: list[str],
                              tiles: list[str], gan_seeds: int, feedbacks: int, feedback: str, size: int,
                              speeds: list[float], ema: float, jobs: int, first_seed: int = 0,
                              lambda_colour: float = 0.0, partition: str = "group", seg_seeds: int = 1
                              ) -> dict[str, Any]:
    console = Console()
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule {unknown[0]!r}; choose from {', '.join(RULES)}")
    seg_steps = 150 if quick else 300
    base = ExperimentConfig(out=Path("/nonexistent"), data=data, size=size, quick=quick, scenes=160 if quick else 600,
                            lambda_colour=lambda_colour, partition=partition)
    tiles = tiles if data is not None else ["scenes"]
    if seg_seeds < 1:
        raise ValueError(f"need --seg-seeds >= 1, got {seg_seeds}")
    for r in rules:  # before any training: a recipe the nodes would refuse (d_steps in segmentation mode), or a
        replace(base.recipe(feedback), d_steps=RULES[r].d_steps)  # real run, which keeps the command line's D pace
        if RULES[r].mode == "real" and RULES[r].d_steps != 1:
            raise ValueError(f"rule {r}: the real runs take one D step per feedback")
    every = [(replace(base, test=f"tile={t}") if data is not None else base, r, s, feedbacks, feedback, speeds, ema,
              seg_steps, seg_seeds) for t in tiles for s in gan_seed_range(first_seed, gan_seeds) for r in rules]
    jobs_args = [a for a in every if RULES[a[1]].mode != "real"]
    real_args = [a for a in every if RULES[a[1]].mode == "real"]  # each uses every core: alone, after the simulations
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    partial = json_out.with_suffix(".rows.jsonl") if json_out is not None else None  # each row as it finishes
    if partial is not None:
        partial.write_text("")

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        snaps = f", snapshots {row['val_iou_snapshots']:.3f}" if "val_iou_snapshots" in row else ""
        console.print(f"[{len(rows)}/{len(every)}] {row['test']} GAN seed {row['gan_seed']} {row['rule']}: "
                      f"val IoU {row['val_iou_raw']:.3f} (EMA {row['val_iou_ema']:.3f}{snaps}), staleness "
                      f"{row['staleness_mean']:.2f}, {time.time() - t0:.0f} s")
        if partial is not None:
            with open(partial, "a") as f:
                f.write(json.dumps(row) + "\n")

    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_start,
                                 initargs=(os.getpid(),)) as pool:
            for fut in as_completed([pool.submit(_one, a) for a in jobs_args]):
                done(fut.result())
    else:
        for a in jobs_args:
            done(_one(a))
    for cfg, name, seed, *_ in real_args:
        rule = RULES[name]
        done(real_row(cfg, seed, feedbacks, feedback, ema, seg_steps, name=name, pipeline=rule.pipeline,
                      snapshots=rule.snapshots, seg_seeds=seg_seeds))
    summary = {}
    for r in rules:
        mine = [x for x in rows if x["rule"] == r]
        summary[r] = {k: statistics.mean(x[k] for x in mine) for k in (
            "val_iou_raw", "val_iou_ema", "staleness_mean", "steps", "gan_seconds")}
        summary[r]["val_iou_raw_min"] = min(x["val_iou_raw"] for x in mine)
        summary[r]["val_iou_ema_min"] = min(x["val_iou_ema"] for x in mine)
        snaps = [x["val_iou_snapshots"] for x in mine if "val_iou_snapshots" in x]  # not the `real` rule's rows
        summary[r]["val_iou_snapshots"] = statistics.mean(snaps) if snaps else None
        summary[r]["val_iou_snapshots_min"] = min(snaps, default=None)
    result = {"data": str(data) if data else "scenes", "size": size, "feedback": feedback,
              "lambda_colour": lambda_colour, "partition": partition, "feedbacks": feedbacks, "snapshots": SNAPSHOTS,
              "gan_seeds": gan_seeds, "first_seed": first_seed, "tiles": tiles, "speeds": speeds, "ema": ema,
              "seg_steps": seg_steps, "seg_seeds": seg_seeds,
              "quick": quick, "rules": {r: asdict(RULES[r]) for r in rules}, "runs": rows, "summary": summary,
              "wall_seconds": round(time.time() - t0, 1)}
    real = [x for x in rows if RULES[x["rule"]].mode == "real"]
    if real:
        result["judges_vs_val_iou"] = judge_agreement(real)
    colour = f" + colour {lambda_colour:g}" if lambda_colour else ""
    scored = f", each set's the mean of {seg_seeds} segmenters" if seg_seeds > 1 else ""
    table = Table(title=f"update rules, {feedbacks} feedbacks each, {feedback}{colour} feedback, {size} px: "
                        f"segmentation val IoU on synthetic images (mean over {gan_seeds} GAN seeds x {len(tiles)} "
                        f"split(s){scored})")
    for col in ("rule", "G steps", "staleness", "val IoU", "min", "val IoU (EMA)", "min (EMA)",
                "val IoU (snapshots)", "min (snapshots)"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for r, m in summary.items():
        table.add_row(r, f"{m['steps']:.0f}", f"{m['staleness_mean']:.2f}", f"{m['val_iou_raw']:.3f}",
                      f"{m['val_iou_raw_min']:.3f}", f"{m['val_iou_ema']:.3f}", f"{m['val_iou_ema_min']:.3f}",
                      *("-" if m[k] is None else f"{m[k]:.3f}" for k in ("val_iou_snapshots", "val_iou_snapshots_min")))
    console.print(table)
    if real:
        console.print(_judges_table(real, result["judges_vs_val_iou"]))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result


def _judges_table(real: list[dict[str, Any]], agreement: dict[str, float | None]) -> Table:
    pooled = " (pooled over the real rules)" if len({r["rule"] for r in real}) > 1 else ""
    table = Table(title="real runs: the nodes' judges over the second half against the synthetic set's val IoU "
                        f"(Spearman{pooled}: label_iou {agreement['label_iou']}, transfer_iou "
                        f"{agreement['transfer_iou']})")
    for col in ("rule", "split", "GAN seed", "val IoU", "label_iou late", "transfer_iou late",
                "alarms (label, transfer)", "dropped stale"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for r in sorted(real, key=lambda x: (x["rule"], x["test"], x["gan_seed"])):
        table.add_row(r["rule"], str(r["test"]), str(r["gan_seed"]), f"{r['val_iou_raw']:.3f}",
                      *("-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("label_iou_late", "transfer_iou_late")),
                      f"{r.get('degraded_alarms')}, {r.get('transfer_iou_alarms')}", str(r["dropped_stale"]))
    return table
