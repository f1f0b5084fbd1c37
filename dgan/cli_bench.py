"""`dgan bench ...`: each benchmark prints a table and writes its JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dgan.choices import GradDtype, Partition
from dgan.cli_app import (
    JsonOut,
    LambdaColour,
    Quick,
    app,
    bench_app,
)
from dgan.feedback import FeedbackMode
from dgan.logs import setup_logging

log = logging.getLogger("dgan")


@bench_app.command("transport")
def bench_transport(
    quick: Quick = False,
    json_out: JsonOut = None,
    record: Annotated[bool, typer.Option(help="Also measure the broker with --record on.")] = False,
    arrays: Annotated[bool, typer.Option(help="Also measure the broker building every tensor as an array (its "
                                              "validation before it became header-only).")] = False,
    pyzmq: Annotated[bool, typer.Option(help="Also measure the broker on pyzmq's Python send/recv_multipart (its "
                                             "I/O before it called the compiled layer).")] = False,
    size: Annotated[list[int] | None, typer.Option(help="Payload bytes (repeat); default 1 KiB, 64 KiB, 1 MiB, "
                                                        "4 MiB.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved rounds over the paths; medians are reported.")] = 3,
    broker_hwm: Annotated[list[int] | None, typer.Option(min=1, help="Also the broker with this high-water mark "
                                                                     "(repeat; its default is 64).")] = None,
    malloc: Annotated[bool, typer.Option(help="Also the broker with glibc's malloc as it comes, and zmq.proxy "
                                              "with the malloc thresholds the broker runs with.")] = False,
    unbatched: Annotated[bool, typer.Option(help="Also the broker sending each message to the generator as soon as "
                                                 "it is routed (its sending before bursts).")] = False,
    settle: Annotated[float, typer.Option(min=0.0, max=60.0, help="Seconds of idle before the round-trip phase "
                                                                  "(round trips are also timed right after each "
                                                                  "stream).")] = 1.0,
) -> None:
    """Throughput and round-trip latency: dgan broker vs zmq.proxy vs direct."""
    from benchmarks.transport import run_transport_benchmark

    setup_logging("WARNING")
    run_transport_benchmark(quick=quick, json_out=json_out, with_record=record, with_arrays=arrays,
                            with_pyzmq=pyzmq, sizes=size or None, repeats=repeats, broker_hwm=broker_hwm,
                            with_malloc=malloc, with_unbatched=unbatched, settle_s=settle)


@bench_app.command("training")
def bench_training(quick: Quick = False, json_out: JsonOut = None) -> None:
    """DGAN (4 node processes) vs centralized pix2pix: samples/s, communication share, wire bytes."""
    from benchmarks.training import run_training_benchmark

    setup_logging("WARNING")
    run_training_benchmark(quick, json_out)


@bench_app.command("wan")
def bench_wan(
    quick: Quick = False,
    json_out: JsonOut = None,
    profile: Annotated[list[str] | None, typer.Option(help="Only these profiles (lan, regional, far, far+slow); "
                                                           "default all, --quick: lan and far.")] = None,
    light: Annotated[bool, typer.Option(help="Light nodes (a fixed gradient after --work-ms): the wire sets the "
                                             "pace, as with GPUs. --no-light: real discriminators.")] = True,
    work_ms: Annotated[float, typer.Option(help="Light nodes: milliseconds of work per batch.")] = 20.0,
    repeats: Annotated[int, typer.Option(help="Runs per variant and profile (median reported); 0: 3, or 1 with "
                                              "--quick.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Write samples/s against RTT, per variant, as a PNG.")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="Only these variants (async, async-auto, async-auto-u1, "
                                                           "async-auto-8bit, sync, sync-8bit); default all.")] = None,
) -> None:
    """Broker, generator and nodes on separate network-namespace hosts, links shaped to LAN, regional and far
    profiles: samples/s async vs sync and with --pipeline auto, staleness, bytes per sample, communication share.
    Needs root and iproute2."""
    from benchmarks.netlab import NetLabUnavailable
    from benchmarks.wan import PROFILES, VARIANTS, run_wan_benchmark

    setup_logging("WARNING")
    unknown = [p for p in profile or [] if p not in PROFILES]
    if unknown:
        raise typer.BadParameter(f"unknown profile(s) {unknown}; choose from {sorted(PROFILES)}",
                                 param_hint="--profile")
    names = [v.name for v in VARIANTS]
    unknown = [v for v in variant or [] if v not in names]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from {names}", param_hint="--variant")
    try:
        run_wan_benchmark(quick, json_out, profiles=profile or None, light=light, work_ms=work_ms,
                          repeats=repeats or None, plot=plot, variants=variant or None)
    except NetLabUnavailable as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None


@bench_app.command("scale")
def bench_scale(
    quick: Quick = False,
    json_out: JsonOut = None,
    nodes: Annotated[list[int] | None, typer.Option(help="Node counts to run (default 32, 64, 128; --quick: 16, "
                                                         "32).")] = None,
) -> None:
    """Many light nodes on one broker and one generator: broker CPU per message, round trip p50/p99 through the
    broker, false expiries, STATUS size, feedbacks handled per second."""
    from benchmarks.scale import run_scale_benchmark

    setup_logging("WARNING")
    run_scale_benchmark(quick, json_out, sizes=nodes or None)


@bench_app.command("heartbeats")
def bench_heartbeats(
    quick: Quick = False, json_out: JsonOut = None,
    peers: Annotated[list[int] | None, typer.Option("--peers", help="Simulated peers (repeat).")] = None,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
) -> None:
    """Heartbeat-only peers (default 250 and 1,000) on one broker: false expiries and the broker's CPU."""
    from benchmarks.heartbeats import run_heartbeat_benchmark

    setup_logging("WARNING")
    result = run_heartbeat_benchmark(quick, json_out, peers, heartbeat)
    if any(r["registered"] != r["peers"] or r["false_expiries"] for r in result["rows"]):
        raise typer.Exit(1)


@bench_app.command("straggler")
def bench_straggler(quick: Quick = False, json_out: JsonOut = None) -> None:
    """4 nodes, one 4x slower: applied samples/s in async vs sync mode."""
    from benchmarks.training import run_straggler_benchmark

    setup_logging("WARNING")
    run_straggler_benchmark(quick, json_out)


@bench_app.command("slow-node")
def bench_slow_node(quick: Quick = False, json_out: JsonOut = None) -> None:
    """A node at 20 s per batch beside a fast one: it must feed back every batch and never re-register."""
    from benchmarks.liveness import run_slow_node_benchmark

    setup_logging("WARNING")
    if not run_slow_node_benchmark(quick, json_out)["ok"]:
        raise typer.Exit(1)


@bench_app.command("precision")
def bench_precision(quick: Quick = False, json_out: JsonOut = None) -> None:
    """bf16 autocast vs fp32 for one pix2pix step on this CPU (decides whether training uses bf16)."""
    from benchmarks.precision import run_precision_benchmark

    setup_logging("WARNING")
    run_precision_benchmark(quick, json_out)


@bench_app.command("speed")
def bench_speed(
    quick: Quick = False,
    json_out: JsonOut = None,
    compile_: Annotated[bool, typer.Option("--compile", help="Also torch.compile G (about 35 s to compile at "
                                                             "128 px here).")] = False,
    force_bf16: Annotated[bool, typer.Option(help="Measure bf16 autocast even where this CPU only emulates it "
                                                  "(about 20x slower).")] = False,
    system: Annotated[bool, typer.Option(help="Also local 4-node DGAN runs: fp32 against bf16 in every process, "
                                              "with and without G in channels_last (a few minutes).")] = False,
) -> None:
    """Generator samples/s: fp32 on 2 and 1 threads, channels_last, bf16 with and without channels_last (native
    CPUs only), torch.compile."""
    from benchmarks.gen_speed import run_gen_speed_benchmark

    setup_logging("WARNING")
    run_gen_speed_benchmark(quick, json_out, with_compile=compile_, force_bf16=force_bf16, system=system)


@bench_app.command("malloc")
def bench_malloc(quick: Quick = False, json_out: JsonOut = None) -> None:
    """glibc malloc as it comes against dgan's tuned thresholds: generator cycles, central GAN steps, synthesis
    and segmenter steps, a fresh process per run."""
    from benchmarks.malloc import run_malloc_benchmark

    setup_logging("WARNING")
    run_malloc_benchmark(quick, json_out)


@bench_app.command("openmp")
def bench_openmp(quick: Quick = False, json_out: JsonOut = None) -> None:
    """OpenMP threads that spin while they wait (libgomp's default) against dgan's passive policy: a local DGAN
    run's applied samples/s and CPU per sample, and single-process work alone, fresh processes alternating."""
    from benchmarks.openmp import run_openmp_benchmark

    setup_logging("WARNING")
    run_openmp_benchmark(quick, json_out)


@bench_app.command("wire")
def bench_wire(quick: Quick = False, json_out: JsonOut = None) -> None:
    """Bytes per sample and gradient fidelity of float32, float16 and int8 gradients, for each feedback mode."""
    from benchmarks.wire import run_wire_benchmark

    setup_logging("WARNING")
    run_wire_benchmark(quick, json_out)


@bench_app.command("msglog")
def bench_msglog(quick: Quick = False, json_out: JsonOut = None) -> None:
    """Message-log write and read+verify speed, MB/s."""
    from benchmarks.msglog import run_msglog_benchmark

    setup_logging("WARNING")
    run_msglog_benchmark(quick, json_out)


@bench_app.command("chaos")
def bench_chaos(
    minutes: Annotated[float, typer.Option(help="How long to soak.")] = 1.0,
    json_out: JsonOut = None,
) -> None:
    """Kill -9 and restart nodes, broker and generator at random; the log invariants must hold, the run must
    reach its steps, and nothing may crash."""
    from benchmarks.chaos import run_chaos_benchmark

    setup_logging("WARNING")
    res = run_chaos_benchmark(minutes, json_out)
    if not res["ok"]:
        raise typer.Exit(1)


@bench_app.command("fuzz")
def bench_fuzz(
    count: Annotated[int, typer.Option(help="Malformed or hostile messages to send.")] = 10_000,
    seconds: Annotated[float, typer.Option(help="Stop after this long at most.")] = 300.0,
    json_out: JsonOut = None,
) -> None:
    """Hostile input at a live broker and generator (benchmarks/fuzz_broker.py)."""
    from benchmarks.fuzz_broker import main as fuzz_main

    raise typer.Exit(fuzz_main(["--count", str(count), "--seconds", str(seconds),
                                *(["--json", str(json_out)] if json_out else [])]))


@bench_app.command("privacy")
def bench_privacy(
    quick: Quick = False,
    json_out: JsonOut = None,
    data: Annotated[Path | None, typer.Option(help="Pairs folder to draw the 8 victim images from (default: the "
                                                   "Dubai patches in ../shared if present, else built-in scenes).")
                    ] = None,
    grad_dtype: Annotated[GradDtype, typer.Option(help="The victim node's gradients on the wire (int8: 8 bits "
                                                       "and a per-sample scale).")] = GradDtype.float16,
    lambda_colour: LambdaColour = 0.0,
    feedback: Annotated[list[FeedbackMode] | None, typer.Option(
        "--feedback", help="Attack only these modes (repeat; default: every mode).")] = None,
) -> None:
    """Active (bisection) and passive reconstruction attacks against a real node, for every feedback mode."""
    from benchmarks.privacy import run_privacy_benchmark

    if not lambda_colour >= 0:  # NaN too
        raise typer.BadParameter(f"must be >= 0, got {lambda_colour}", param_hint="--lambda-colour")
    setup_logging("WARNING", "rich", "bench")
    run_privacy_benchmark(quick, json_out, data, grad_dtype=grad_dtype.value, lambda_colour=lambda_colour,
                          modes=feedback)


@bench_app.command("paired")
def bench_paired(
    runs: Annotated[list[Path], typer.Argument(help="update-rule bench JSONs (runs with other --first-seed add pairs).",
                                               exists=True, dir_okay=False)],
    a: Annotated[str, typer.Option(help="The baseline rule.")] = "async-f16",
    b: Annotated[str, typer.Option(help="The rule compared with it.")] = "async-int8",
    json_out: JsonOut = None,
) -> None:
    """Two rules of the update-rule bench paired by split and GAN seed: mean difference, 95% interval, wins."""
    from benchmarks.paired import run_paired

    try:
        run_paired(runs, a, b, json_out)
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc), param_hint="RUNS") from None


@bench_app.command("variety")
def bench_variety(
    checkpoints: Annotated[list[Path], typer.Argument(help="Trained generators (a run's checkpoints/latest.pt).",
                                                      exists=True, dir_okay=False)],
    data: Annotated[Path | None, typer.Option(help="The pairs folder the generators learnt from (default: built-in "
                                                   "scenes).")] = None,
    test: Annotated[str | None, typer.Option(help="The test split kept out (COLUMN=V1[,V2]); default: the one in the "
                                                  "run's experiment results.json, else tile=8.")] = None,
    draws: Annotated[list[int] | None, typer.Option(help="Dropout draws per mask to compare (repeat).")] = None,
    seeds: Annotated[int, typer.Option(help="Segmentation seeds per set.")] = 2,
    seg_steps: Annotated[int, typer.Option(help="Segmenter steps, the same for every set.")] = 700,
    quick: Quick = False,
    json_out: JsonOut = None,
) -> None:
    """Several dropout draws per mask: validation IoU of the synthetic sets, and how much the draws differ."""
    from benchmarks.variety import run_variety_benchmark
    from dgan.training.checkpoints import CheckpointError

    setup_logging("WARNING", "rich", "bench")
    if quick:
        seeds, seg_steps, draws = 1, min(seg_steps, 60), draws or [1, 2]
    try:
        run_variety_benchmark(checkpoints, data, test, draws or [1, 2, 4], seeds, seg_steps, json_out, quick)
    except (ValueError, CheckpointError) as exc:  # a bad split or setting, or a file that is no checkpoint
        raise typer.BadParameter(str(exc)) from None


@bench_app.command("score-run")
def bench_score_run(
    checkpoints: Annotated[list[Path], typer.Argument(help="Finished runs' generators (a run's "
                                                      "checkpoints/latest.pt).", exists=True, dir_okay=False)],
    data: Annotated[Path | None, typer.Option(help="The pairs folder the generators learnt from (default: built-in "
                                                   "scenes).")] = None,
    test: Annotated[str | None, typer.Option(help="The test split kept out (COLUMN=V1[,V2]); default: the one in the "
                                                  "run's experiment results.json, else tile=8.")] = None,
    weights: Annotated[list[str] | None, typer.Option(help="G's weights to synthesise from (repeat): raw, ema, "
                                                           "snapshots.")] = None,
    seg_steps: Annotated[int, typer.Option(help="Segmenter steps (the update-rule bench's: 300).")] = 300,
    seg_seeds: Annotated[int, typer.Option(help="Segmenters per set (seeds 0..N-1), averaged.")] = 1,
    json_out: JsonOut = None,
) -> None:
    """Finished runs scored as `dgan bench update-rule` scores its rules: a real run beside its simulated twin."""
    from benchmarks.real_rule import score_runs
    from dgan.training.checkpoints import CheckpointError

    chosen = tuple(weights or ["raw", "snapshots"])
    bad = [w for w in chosen if w not in ("raw", "ema", "snapshots")]
    if bad or seg_seeds < 1 or seg_steps < 1:
        raise typer.BadParameter(f"weights among raw, ema, snapshots (got {', '.join(bad) or 'those'}), seg-seeds "
                                 f"and seg-steps >= 1 (got {seg_seeds}, {seg_steps})")
    setup_logging("WARNING", "rich", "bench")
    try:
        score_runs(checkpoints, data, test, chosen, seg_steps, seg_seeds, json_out)
    except (ValueError, CheckpointError) as exc:  # a bad split, or a file that is no checkpoint
        raise typer.BadParameter(str(exc)) from None


@bench_app.command("update-rule")
def bench_update_rule(
    quick: Quick = False,
    json_out: JsonOut = None,
    data: Annotated[Path | None, typer.Option(help="Pairs folder with tile and source_image columns (Dubai); "
                                                   "default: built-in scenes.")] = None,
    rule: Annotated[list[str] | None, typer.Option(help="Rules to compare (repeat): async, async-p1, buffered, "
                                                        "buffered-lr2, sync, central, async-f16, async-int8, "
                                                        "async-f16-bf16, async-f16-bf16-all, async-p1-f16, async-p1-eq "
                                                        "(all: benchmarks/update_rule.py RULES); real, real-p1 (real "
                                                        "runs: broker, node processes, the judges' verdicts; "
                                                        "real-p1 as dgan experiment runs them).")] = None,
    tile: Annotated[list[str] | None, typer.Option(help="Test tiles, one split each (repeat).")] = None,
    gan_seeds: Annotated[int, typer.Option(help="GAN trainings per rule and split.")] = 2,
    first_seed: Annotated[int, typer.Option(help="The first GAN seed: a later run (with its own --json) adds "
                                                 "seeds to an earlier one; the simulated rules are deterministic.")
                          ] = 0,
    feedbacks: Annotated[int, typer.Option(help="Node answers per training (the same for every rule).")] = 500,
    feedback: Annotated[str, typer.Option(help="The nodes' feedback mode.")] = "adversarial",
    size: Annotated[int, typer.Option(help="Image size.")] = 64,
    speed: Annotated[list[float] | None, typer.Option(help="Seconds per batch of each node (repeat; cycled).")
                     ] = None,
    ema: Annotated[float, typer.Option(help="EMA decay of the generator weights compared with the raw ones.")
                   ] = 0.999,
    jobs: Annotated[int, typer.Option(help="Trainings at a time (each on one thread).")] = 2,
    lambda_colour: LambdaColour = 0.0,
    partition: Annotated[Partition, typer.Option(help="How the training pairs are dealt to the 4 nodes: group (by "
                                                      "tile, as the experiment) or iid.")] = Partition.group,
    seg_seeds: Annotated[int, typer.Option(help="Segmenters per synthetic set (seeds 0..N-1), averaged: one "
                                                "segmenter's seed moves a set's IoU by up to 0.1.")] = 1,
) -> None:
    """Generator update rules (async, buffered, sync, central) at an equal feedback budget, simulated in one
    process with the real trainers: segmentation validation IoU, staleness."""
    from benchmarks.update_rule import RULES, gan_seed_range, run_update_rule_benchmark

    unknown = [r for r in rule or [] if r not in RULES]
    if unknown:
        raise typer.BadParameter(f"unknown rule {unknown[0]!r}; choose from {', '.join(RULES)}", param_hint="--rule")
    try:
        gan_seed_range(first_seed, gan_seeds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--first-seed") from None
    if not lambda_colour >= 0:  # NaN too
        raise typer.BadParameter(f"must be >= 0, got {lambda_colour}", param_hint="--lambda-colour")
    if seg_seeds < 1:
        raise typer.BadParameter(f"must be >= 1, got {seg_seeds}", param_hint="--seg-seeds")
    setup_logging("WARNING", "rich", "bench")
    if quick:
        feedbacks = min(feedbacks, 120)
    run_update_rule_benchmark(data, quick, json_out, rule or ["async", "buffered", "sync", "central"], tile or ["8"],
                              gan_seeds, feedbacks, feedback, size, speed or [1.0], ema, jobs, first_seed,
                              lambda_colour, partition.value, seg_seeds)


if __name__ == "__main__":
    app()
