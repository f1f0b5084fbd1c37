"""Whole runs from one command: run, demo, segment (the experiment is in :mod:`dgan.cli_experiment`)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dgan.choices import MIXING_HOWS, LocalHow, Precision, RunPartition, TrainMode
from dgan.cli_app import (
    ChannelsLast,
    Device,
    Feedback,
    JsonOut,
    LambdaColour,
    LambdaL1,
    LambdaSemantic,
    LogFormat,
    LogLevel,
    Quiet,
    Threads,
    app,
    console,
    segment_app,
    set_torch_threads,
)
from dgan.cpu_features import slow_bf16_warning
from dgan.feedback import DEFAULT_MODE, MAX_D_STEPS
from dgan.logs import setup_logging

log = logging.getLogger("dgan")


def _print_summary(summary: dict) -> None:
    table = Table(title=f"dgan run {summary['run_id']}: {summary['steps']} steps in {summary['wall_s']} s")
    for col in ("node", "feedback", "pairs", "feedbacks", "samples", "staleness mean/max", "last losses"):
        table.add_column(col)
    for name, n in summary["nodes"].items():
        losses = ", ".join(f"{k}={v:.3f}" for k, v in n["losses"].items() if k in ("d_real", "d_fake", "g_adv",
                                                                                   "g_l1", "g_semantic", "g_colour"))
        sm = "-" if n["staleness_mean"] is None else f"{n['staleness_mean']:.2f}/{n['staleness_max']}"
        table.add_row(name, n.get("feedback", "?"), str(n["dataset_size"]), str(n["feedbacks"]), str(n["samples"]),
                      sm, losses)
    console.print(table)
    console.print(f"samples/s {summary['samples_per_s']}, updates/s {summary['updates_per_s']}, "
                  f"synthetic images {summary['synthetic_images']}, out {summary['out']}")


@app.command()
def run(
    nodes: Annotated[int, typer.Option(help="Discriminator nodes to start.")] = 4,
    steps: Annotated[int, typer.Option(help="Generator updates.")] = 300,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/latest"),
    data: Annotated[str | None, typer.Option(help="The dataset (default: built-in scenes): a pairs folder, "
                                                 "whu:PATH[:split], city-osm:PATH[:cities], airbus:PATH (imported "
                                                 "once under OUT/data) or scenes:buildings-roads.")] = None,
    partition: Annotated[RunPartition, typer.Option(help="How the scenes are split across nodes.")] = (
        RunPartition.iid),
    scenes: Annotated[int, typer.Option(help="Built-in scenes to split across the nodes.")] = 800,
    record: Annotated[Path | None, typer.Option(help="Broker message log.")] = None,
    image_size: int = 128,
    g_width: int = 32,
    d_width: int = 32,
    batch_size: int = 8,
    mode: Annotated[TrainMode, typer.Option(help="async, or sync rounds.")] = TrainMode.async_,
    feedback: Feedback = DEFAULT_MODE,
    lambda_l1: LambdaL1 = 100.0,
    lambda_semantic: LambdaSemantic = 20.0,
    lambda_colour: LambdaColour = 0.0,
    diffaugment: Annotated[bool, typer.Option(help="Every node's PatchGAN sees DiffAugment'ed pairs.")] = False,
    d_steps: Annotated[int | None, typer.Option(
        min=1, max=MAX_D_STEPS, show_default="2; 1 in segmentation mode and in sync rounds", help=(
        "Every node: discriminator steps per feedback (PatchGAN modes), each on a real batch. In async mode, "
        "N nodes in turn: N keeps each D at the generator's pace (sync rounds already do)."))] = None,
    positive_crops: Annotated[float, typer.Option(help="Every node: share of crops on a foreground pixel (sparse "
                                                       "targets; 0 = uniform).")] = 0.0,
    threads: Threads = 1,
    device: Device = "cpu",
    precision: Annotated[Precision, typer.Option(
        help="Every process: fp32; bf16 autocast; or auto, bf16 only on CUDA or a CPU with native bf16 "
        "(AVX512-BF16/AMX).")] = Precision.fp32,
    channels_last: ChannelsLast = False,
    seed: int = 0,
    quiet: Quiet = False,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Start broker, generator and N nodes as processes, train, synthesise, stop them all."""
    from dgan.data.loaders import read_classes
    from dgan.data.scenes import CLASSES
    from dgan.data.shards import DataError
    from dgan.feedback import default_d_steps
    from dgan.run import RunConfig

    setup_logging(log_level, log_format, "run")
    d_steps = default_d_steps(feedback, sync=mode == TrainMode.sync) if d_steps is None else d_steps
    _check_node_recipe(feedback, lambda_l1=lambda_l1, lambda_semantic=lambda_semantic, diffaugment=diffaugment,
                       lambda_colour=lambda_colour, d_steps=d_steps)
    if not 0.0 <= positive_crops <= 1.0:
        console.print(f"[red]--positive-crops must be in [0, 1], got {positive_crops}[/red]")
        raise typer.Exit(2)
    folder = pairs_folder(data, out, image_size, keep_classes=True)
    variant = data.partition(":")[2] if data is not None and data.startswith("scenes:") else "buildings"
    try:
        classes = CLASSES[variant] if folder is None else read_classes(folder) or ("background", "building")
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    cfg = RunConfig(nodes=nodes, steps=steps, out=out, data=folder, scene_variant=variant, num_classes=len(classes),
                    partition=partition.value, scenes=scenes, record=record, image_size=image_size, g_width=g_width,
                    d_width=d_width, batch_size=batch_size, mode=mode.value, threads=threads, device=device,
                    precision=precision.value, channels_last=channels_last, seed=seed, feedback=feedback.value,
                    lambda_l1=lambda_l1,
                    node_args=["--lambda-semantic", str(lambda_semantic), "--lambda-colour", str(lambda_colour),
                               "--positive-crops", str(positive_crops),
                               "--diffaugment" if diffaugment else "--no-diffaugment", "--d-steps", str(d_steps)])
    if (slow := slow_bf16_warning(precision.value, device)) is not None:
        console.print(f"[yellow]{slow}[/yellow]")
    _run_with_view(cfg, quiet, log_format, f"dgan run: {nodes} nodes, {steps} steps, feedback {feedback.value}")


def _check_node_recipe(feedback: Any, **options: Any) -> None:
    """Refuse, once and before any process starts, a recipe every node would refuse (exit code 2)."""
    from dgan.feedback import FeedbackConfig

    try:
        FeedbackConfig(feedback, **options)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def pairs_folder(data: str | None, out: Path, size: int, keep_classes: bool = False) -> Path | None:
    """``--data`` for the commands that hand folders to node processes; a bad spec is a one-line error."""
    from dgan.data.importer import as_pairs_folder
    from dgan.data.shards import DataError

    try:
        if data is not None and data.startswith("scenes:"):
            from dgan.data.spec import parse_data_spec

            parse_data_spec(data)  # a bad variant is refused here
        return as_pairs_folder(data, out, size, keep_classes=keep_classes)
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _load_pairs(data: str, size: int, num_classes: int | None = None) -> Any:
    """A dataset spec for the segmenter: as it is, or for a ``num_classes`` model (a binary model takes a
    multi-class set's first class against the rest)."""
    from dgan.data.shards import DataError
    from dgan.data.spec import binary, load_data

    pairs = load_data(data, size)
    if num_classes is None or len(pairs.classes) == num_classes:
        return pairs
    if num_classes == 2:
        log.warning("%s has classes %s; this model is binary: %s against the rest", data,
                    ", ".join(pairs.classes), pairs.classes[1])
        return binary(pairs)
    raise DataError(f"{data} has {len(pairs.classes)} classes ({', '.join(pairs.classes)}); the model has "
                    f"{num_classes}")


def _run_with_view(cfg: Any, quiet: bool, log_format: str, title: str, report: bool = True) -> dict:
    """run_local with the live panel on a terminal, JSON status lines with --log-format json, else quiet."""
    from dgan.live import RunView
    from dgan.run import run_local

    mode = "quiet" if quiet else "json" if log_format == "json" else "live" if console.is_terminal else "quiet"
    view = RunView(mode, title, console)
    try:
        with view:
            summary = run_local(cfg, view.watch)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        console.print(f"[red]run failed:[/red] {exc}")
        raise typer.Exit(1) from None
    if not quiet:
        _print_summary(summary)
    if report:
        from dgan.report import write_report

        console.print(f"report: {write_report(cfg.out)}")
    return summary


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(help="Generator updates.")] = 200,
    nodes: Annotated[int, typer.Option(help="Discriminator nodes.")] = 4,
    feedback: Feedback = DEFAULT_MODE,
    d_steps: Annotated[int, typer.Option(min=1, max=MAX_D_STEPS, help=(
        "Every node's discriminator steps per feedback. The demo's own recipe is 1, as before session 32: at its "
        "200 updates 4 of 8 demos at the nodes' default, 2, ended below predicting building everywhere, 4 of 23 "
        "at 1, with the plain segmenter alone (docs/results/demo.md)."))] = 1,
    seg_recolour: Annotated[list[float] | None, typer.Option(help=(
        "Share of the segmenter's training images recoloured (channels shuffled, inverted or greyed); repeat it for "
        "one segmenter per value, the best on 32 validation scenes kept. Default: --seg-recolour 0 --seg-recolour "
        "0.5, which left 2 of 23 saved one-step demo sets below predicting building everywhere, against 4 with the "
        "plain segmenter alone (docs/results/demo.md)."))] = None,
) -> None:
    """`dgan run` on the built-in scenes with 4 nodes: train, synthesise, summarise."""
    from dgan.demo import DEMO_RECOLOUR, recolour_shares, segment_synthetic
    from dgan.report import write_report
    from dgan.run import RunConfig

    setup_logging("INFO", "rich", "demo")
    _check_node_recipe(feedback, d_steps=d_steps)
    try:  # refused before minutes of training
        recolour = recolour_shares(seg_recolour or DEMO_RECOLOUR)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--seg-recolour") from e
    cfg = RunConfig(nodes=nodes, steps=steps, out=out, scenes=800, sample_every=50, feedback=feedback.value,
                    node_args=["--d-steps", str(d_steps)])
    _run_with_view(cfg, False, "rich", f"dgan demo: {nodes} nodes, {steps} steps on built-in scenes", report=False)
    console.print(f"sample grids (mask | synthetic): {out / 'samples'}; synthetic set: {out / 'synthetic'}")
    with console.status(f"segmentation: {len(recolour)} U-Net(s) trained on the "
                        f"{len(list((out / 'synthetic' / 'images').glob('*')))} synthetic images only…"):
        seg = segment_synthetic(out, recolour=recolour)
    if len(seg.get("tried", [])) > 1:
        console.print("segmenters, validation IoU: " + ", ".join(
            f"recolour {t['recolour']:g}: {t['best_val_iou']:.3f}" for t in seg["tried"])
            + f"; kept recolour {seg['recolour']:g}")
    console.print(f"building IoU on 64 held-out scenes no node saw: [bold]{seg['iou']:.3f}[/bold] "
                  f"(F1 {seg['f1']:.3f}, precision {seg['precision']:.3f}, recall {seg['recall']:.3f}; predicting "
                  f"building everywhere: {seg['all_building_iou']:.3f}); "
                  f"predictions: {out / 'predictions' / 'dgan.png'}")
    if seg["iou"] <= seg["all_building_iou"]:
        console.print(f"[yellow]below predicting building everywhere: after {steps} updates this generator draws "
                      "buildings that a segmenter trained on its images does not find in real scenes, as some "
                      "demos do (docs/results/demo.md). Run it again, or look at "
                      f"{out / 'samples'}.[/yellow]")
    console.print(f"report: {write_report(out)}")



@segment_app.command("train")
def segment_train(
    data: Annotated[str, typer.Option(help="Your pairs: a folder with images/ and masks/ (real or a run's "
                                           "synthetic/), or whu:PATH, city-osm:PATH, airbus:PATH.")],
    out: Annotated[Path, typer.Option(help="Where to save the model (.pt).")],
    synthetic: Annotated[str | None, typer.Option(help="A synthetic set (a run's synthetic/) to train on beside "
                                                        "--data, your own pairs: your department's model.")] = None,
    how: Annotated[LocalHow, typer.Option(help="With --synthetic: mixed batches; or synthetic first, then fine-tuned "
                                               "on --data (finetune: half the steps each; pretrain: all the steps "
                                               "each, twice the cost; replay: as pretrain, the fine-tuning batches "
                                               "keep 1 - --real-share synthetic pairs).")] = LocalHow.pretrain,
    real_share: Annotated[float, typer.Option(help="With --synthetic, mixed: share of each batch from --data; replay: "
                                                   "the same for the fine-tuning batches.")] = 0.5,
    val: Annotated[str | None, typer.Option(help="Validation pairs: the model kept is the best here.")] = None,
    photometric: Annotated[float, typer.Option(help="Brightness/contrast/colour/blur jitter of --data's images while "
                                                    "training (0 = off).")] = 0.0,
    synthetic_photometric: Annotated[float | None, typer.Option(
        help="The same for --synthetic's images (default: --photometric). On a synthetic set alone 0.3 lifted every "
        "GAN's set; as the first stage of a department model it gained less over two splits (session 22, "
        "docs/results/department-models.md).")] = None,
    compare: Annotated[bool, typer.Option(help="With --synthetic and --val: also train on --data alone (same steps, "
                                               "seed and --photometric) and keep the synthetic set's model only if "
                                               "it beats that on --val (a tie keeps your pairs alone), so a "
                                               "department sees what the set gives it before it relies on it. "
                                               "--val also picked each model's best step, so the gain is "
                                               "optimistic: confirm on held-out pairs with `dgan segment eval`."
                                               )] = False,
    size: int = 128,
    steps: int = 1000,
    batch_size: int = 8,
    width: int = 16,
    seed: int = 0,
    threads: Threads = 2,
    device: Device = "cpu",
    json_out: JsonOut = None,
) -> None:
    """Train a segmentation U-Net: on one set, or on a shared synthetic set plus your own pairs."""
    from dgan.data.shards import DataError
    from dgan.segment import SegConfig, save_model, train_local, train_segmenter

    setup_logging("INFO")
    set_torch_threads(threads)
    if synthetic is not None and not 0 < real_share < 1:
        console.print(f"[red]--real-share must be between 0 and 1, got {real_share}[/red]")
        raise typer.Exit(2)
    if json_out is not None and not json_out.parent.is_dir():
        console.print(f"[red]--json: the folder {json_out.parent} does not exist[/red]")
        raise typer.Exit(2)
    if batch_size < 1 or (synthetic is not None and how.value in MIXING_HOWS and batch_size < 2):
        console.print(f"[red]--batch-size must be 1 or more (2 or more for --how {how.value}, whose batches hold "
                      f"both sets), got {batch_size}[/red]")
        raise typer.Exit(2)
    if compare and (synthetic is None or val is None):
        console.print("[red]--compare needs --synthetic (the set to judge) and --val (your pairs to judge it on)[/red]")
        raise typer.Exit(2)
    syn_jitter = photometric if synthetic_photometric is None else synthetic_photometric
    if not (0 <= photometric <= 1 and 0 <= syn_jitter <= 1):  # NaN too
        console.print(f"[red]--photometric and --synthetic-photometric must be in [0, 1], got {photometric} and "
                      f"{syn_jitter}[/red]")
        raise typer.Exit(2)
    try:
        train = _load_pairs(data, size)
        syn = _load_pairs(synthetic, size, len(train.classes)) if synthetic else None
        val_set = _load_pairs(val, size, len(train.classes)) if val else None
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    cfg = SegConfig(width=width, steps=steps, batch_size=batch_size, seed=seed, num_classes=len(train.classes),
                    device=device, photometric=photometric if syn is None else syn_jitter)
    if device != "cpu":
        from dgan.cpu_features import deterministic_cuda

        deterministic_cuda()
    val_pairs = (val_set.images, val_set.masks) if val_set else None
    if syn is None:
        model, info = train_segmenter(train.images, train.masks, cfg, val=val_pairs)
    else:
        model, info = train_local((syn.images, syn.masks), (train.images, train.masks), cfg, val=val_pairs,
                                  how=how.value, real_share=real_share, real_photometric=photometric)
    trained = {"with_synthetic" if syn is not None else "own": (model, info, cfg)}
    gain = None
    if compare:
        own_cfg = replace(cfg, photometric=photometric)
        trained["own"] = (*train_segmenter(train.images, train.masks, own_cfg, val=val_pairs), own_cfg)
        gain = info["best_val_iou"] - trained["own"][1]["best_val_iou"]
        _print_comparison(trained["own"][1], info, gain)
    # with --compare, the synthetic set has to beat your pairs alone to be kept
    kept = "with_synthetic" if syn is not None and (gain is None or gain > 0) else "own"
    model, info, cfg = trained[kept]
    save_model(model, cfg, out)
    console.print(f"saved {out}{f' ({kept})' if compare else ''}: {info['train_seconds']:.0f} s, best step "
                  f"{info['best_step']}, val IoU {info['best_val_iou']}")
    if json_out:
        models = {k: {key: v[1][key] for key in ("best_val_iou", "best_step", "train_seconds",
                                                 "synthetic_stage_only") if key in v[1]} for k, v in trained.items()}
        json_out.write_text(json.dumps({
            "kept": kept, **models, **({"gain": gain} if compare else {}),
            "settings": {"how": how.value if syn is not None else None,
                         "real_share": real_share if syn is not None and how.value in MIXING_HOWS else None,
                         "steps": steps, "seed": seed, "size": size,
                         "photometric": photometric, "synthetic_photometric": syn_jitter if syn is not None else None,
                         "data": data, "synthetic": synthetic, "val": val}}, indent=2))


def _print_comparison(own: dict[str, Any], both: dict[str, Any], gain: float) -> None:
    table = Table("model", "best val IoU", "best step", "seconds", title="your pairs alone against the synthetic "
                  "set beside them (--val; it also picked each model's best step, so the gain is optimistic)")
    for name, info in (("your pairs alone", own), ("with the synthetic set", both)):
        table.add_row(name, f"{info['best_val_iou']:.4f}", str(info["best_step"]), f"{info['train_seconds']:.0f}")
    table.add_row("gain", f"{gain:+.4f}", "", "")
    console.print(table)
    if both.get("synthetic_stage_only"):
        console.print("[yellow]the synthetic set's model is its synthetic stage alone: fine-tuning on your pairs "
                      "scored lower on --val[/yellow]")


@segment_app.command("eval")
def segment_eval(
    model: Annotated[Path, typer.Option(help="A model from `dgan segment train`.")],
    data: Annotated[str, typer.Option(help="Real test pairs: a folder (images/, masks/) or whu:PATH, "
                                           "city-osm:PATH, airbus:PATH.")],
    size: int = 128,
    grid: Annotated[Path | None, typer.Option(help="Save an image | truth | prediction grid here.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Building IoU, F1, precision, recall and pixel accuracy on real test data (per class and mIoU for more
    than two classes)."""
    from dgan.data.shards import DataError
    from dgan.segment import class_metrics, load_model, predict_labels, prediction_grid
    from dgan.training.checkpoints import CheckpointError

    try:
        net, seg_cfg = load_model(model)
        test = _load_pairs(data, size, seg_cfg.num_classes)
    except (DataError, CheckpointError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    pred = predict_labels(net, test.images, seg_cfg.num_classes)
    m = class_metrics(pred, test.masks, test.classes)
    table = Table("metric", "value", title=f"{model} on {data} ({len(test)} pairs)")
    for k, v in m.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    if grid:
        prediction_grid(test.images, test.masks, pred, grid)
    if json_out:
        json_out.write_text(json.dumps(m, indent=2))
