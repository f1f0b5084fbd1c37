"""The experiment and its report: `dgan experiment`, `dgan report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dgan.choices import FakeDtype, GradDtype, LocalFrom, LocalHow, Partition, Precision, Weighting
from dgan.cli_app import (
    ChannelsLast,
    Device,
    GanMethod,
    LambdaColour,
    LambdaL1,
    LambdaSemantic,
    app,
    console,
)
from dgan.cli_runs import pairs_folder
from dgan.cpu_features import slow_bf16_warning
from dgan.feedback import DEFAULT_MODE, MAX_D_STEPS, FeedbackMode
from dgan.logs import setup_logging


@app.command()
def experiment(
    out: Annotated[Path, typer.Option(help="Output folder (results.json, results.md, predictions/).")] = Path(
        "runs/experiment"),
    data: Annotated[str | None, typer.Option(help="A pairs folder with a manifest (Dubai: 'tile'), or whu:PATH, "
                                                  "city-osm:PATH, airbus:PATH (imported once under OUT/../data), "
                                                  "or scenes[:buildings-roads|ships]. Default: built-in scenes.")
                    ] = None,
    partition: Annotated[Partition, typer.Option(help="group (by tile) or iid; dirichlet/size also work.")] = (
        Partition.group),
    nodes: int = 4,
    size: Annotated[int, typer.Option(help="Resolution.")] = 128,
    gan_steps: Annotated[int, typer.Option(help="Batches of 8 each GAN learns from: the central GAN's steps; a "
                                                "DGAN step that averages N feedbacks counts N.")] = 800,
    seg_steps: Annotated[int, typer.Option(help="Steps for every segmentation training.")] = 700,
    seeds: Annotated[int, typer.Option(help="Repeat each segmentation training with this many seeds (GAN methods: "
                                            "seed s on GAN set s mod --gan-seeds; twice --gan-seeds scores "
                                            "every set twice).")] = 2,
    gan_seeds: Annotated[int, typer.Option(help="GAN trainings per GAN method (segmentation seed s uses GAN "
                                                "s mod this); 1 shares one GAN across the seeds.")] = 1,
    feedback: Annotated[list[FeedbackMode] | None, typer.Option(
        "--feedback", help="The GANs' feedback mode, for DGAN and the central GAN alike; repeat it to compare "
        "modes in one run (the first is `dgan`/`central_gan`, the others `dgan_MODE`/`central_gan_MODE`).")] = None,
    lambda_l1: LambdaL1 = 100.0,
    lambda_semantic: LambdaSemantic = 20.0,
    lambda_colour: LambdaColour = 0.0,
    label_mix: Annotated[float, typer.Option(help="--feedback segmentation: OASIS LabelMix weight (0 = off).")] = 0.0,
    oasis_optim: Annotated[bool, typer.Option(help="OASIS optimisers: D lr 4e-4, G lr 1e-4, beta1 0.")] = False,
    gan_methods: Annotated[list[GanMethod] | None, typer.Option(
        "--gan-method", help="Train only these GAN methods (repeat; default: both). real_all and real_partial "
        "always run, from the cache when they can; a central GAN not asked for is still shown if cached.")] = None,
    seg_standardize: Annotated[bool, typer.Option(help="Segmenter standardises each image first.")] = False,
    seg_photometric: Annotated[float, typer.Option(help="Brightness/contrast/colour/blur jitter while training "
                                                        "the segmenter (0 = off).")] = 0.0,
    synthetic_photometric: Annotated[float, typer.Option(
        help="Jitter for segmenters trained on a GAN's synthetic set alone (0 = off). Chosen on validation in "
        "session 22: on tiles 8 and 5, 15 of 16 paired segmenters went up (central GAN +0.096 and +0.036, DGAN "
        "+0.037 and +0.035), while real images lost 0.02-0.04 in session 21 (docs/results/update-rule.md).")] = 0.3,
    local_photometric: Annotated[float | None, typer.Option(
        help="The same for the department models' synthetic stage; default: --seg-photometric (session 22: 0.3 "
        "gave the departments a mean validation gain of +0.035 against +0.061 on tile 8, +0.023 against +0.016 "
        "on tile 5).")
    ] = None,
    samples_per_mask: Annotated[int, typer.Option(help="Synthetic images per training mask.")] = 2,
    with_sync: Annotated[bool, typer.Option(help="Also run DGAN in sync mode.")] = False,
    test: Annotated[str, typer.Option(help="COLUMN=V1[,V2]: the manifest rows held out for the test; COLUMN is "
                                           "also the group partition's column (another value: another split).")
                    ] = "tile=8",
    groups: Annotated[str, typer.Option(help="Group partition: the COLUMN values of each node, e.g. '7|2,4|5|1,3,6' "
                                             "(default: Dubai's for tile=8, else dealt largest first).")] = "",
    update_every: Annotated[int, typer.Option(help="DGAN async: feedbacks per generator step (0 = one per node, "
                                                   "buffered).")] = 1,
    async_beta1: Annotated[float | None, typer.Option(
        help="DGAN async: the generator's Adam beta1 (default: the central GAN's: 0.5, or 0 with "
        "--oasis-optim). Staleness acts as momentum; 0 drops Adam's own (measured: 2 of 4 trainings "
        "better; docs/results/update-rule.md).")] = None,
    pipeline: Annotated[int, typer.Option(min=1, help="DGAN: requests each node keeps in flight. With 4 nodes, 1 "
                                                      "makes feedback about 3 generator steps stale and 2 about "
                                                      "7; 1 measured better (docs/results/update-rule.md).")] = 1,
    ema: Annotated[float, typer.Option(help="Both GANs keep a moving average of G's weights with this decay "
                                            "(0 = none): with --snapshots 0 they synthesise from it, else it is "
                                            "measured beside as NAME_ema.")] = 0.0,
    snapshots: Annotated[int, typer.Option(help="Both GANs synthesise from this many snapshots of G's weights, "
                                                "spread over the second half of training, each drawing a share of "
                                                "every mask's samples (0 = off; before --ema when both are on). "
                                                "NAME_last beside: the same trainings' last weights (not their "
                                                "EMA), one more segmentation per GAN seed.")
                         ] = 4,
    judged: Annotated[bool, typer.Option(help="Also `dgan_judged`: the same DGAN trainings' sets from the "
                                              "weights where the nodes' transfer_iou peaked.")] = False,
    local: Annotated[list[LocalHow] | None, typer.Option(
        "--local", help="Department models: each department's segmenter on the shared set (see --local-from) plus "
        "its own real pairs, in mixed batches or fine-tuned (finetune: half the steps on each; pretrain: all the "
        "steps on each; replay: as pretrain, with --local-share of the fine-tuning batches from the own pairs and "
        "the rest from the shared set; repeat to compare; the first is `dgan_local` (`central_local`, "
        "`real_local`), the others `dgan_local_HOW`).")] = None,
    department_models: Annotated[bool, typer.Option(help="Train the department models, dgan_local (and the "
                                                         "--local-from yardsticks) (off: the GAN methods only).")
                                 ] = True,
    local_from: Annotated[list[LocalFrom] | None, typer.Option(
        "--local-from", help="What the department models start from: dgan's sets (`dgan_local`); or, as "
        "yardsticks with no gain claim, central_gan's (`central_local`: what a set as good as the central GAN's "
        "would give each department) or real_all, the pooled real pairs (`real_local`: what pooling every image "
        "would give it). Repeat for several.")] = None,
    local_share: Annotated[float, typer.Option(help="Department models, mixed: share of each batch from the "
                                                    "department's own pairs; replay: the same for the fine-tuning "
                                                    "stage.")] = 0.5,
    diffaugment: Annotated[bool, typer.Option(help="DiffAugment before every PatchGAN discriminator (nodes and "
                                                  "the central GAN).")] = False,
    positive_share: Annotated[float, typer.Option(help="Sparse targets (ships): share of each batch, for the "
                                                       "segmenters, the nodes and the central GAN, drawn on "
                                                       "foreground (0 = uniform).")] = 0.0,
    grad_dtype: Annotated[GradDtype, typer.Option(help="DGAN: the nodes' gradients on the wire.")
                          ] = GradDtype.float16,
    fake_dtype: Annotated[FakeDtype, typer.Option(help="DGAN: the generator's fakes on the wire.")
                          ] = FakeDtype.float16,
    weighting: Annotated[Weighting, typer.Option(help="DGAN: each node's feedback weighed by its dataset size "
                                                      "(over the mean), or all alike (equal).")] = Weighting.size,
    d_steps: Annotated[int | None, typer.Option(
        min=1, max=MAX_D_STEPS, show_default="2; 1 in segmentation mode and in sync rounds", help=(
        "DGAN: each node's discriminator steps per feedback (PatchGAN modes), each on a real batch; the central "
        "GAN's D keeps one per generator step. Async, one feedback per step, N nodes: N gives every node's D "
        "as many D steps per generator step as the central D. --with-sync's run gets them only when given: its "
        "rounds already step every D once per generator step."))] = None,
    device: Device = "cpu",
    precision: Annotated[Precision, typer.Option(
        help="Both GANs (every DGAN process, the central GAN's G and D): fp32; bf16 autocast; or auto, bf16 only "
        "on CUDA or a CPU with native bf16 (AVX512-BF16/AMX). The segmenters stay fp32.")] = Precision.fp32,
    channels_last: ChannelsLast = False,
    quick: Annotated[bool, typer.Option(help="A smoke run of the whole pipeline in a few minutes.")] = False,
) -> None:
    """Compare real_all, real_partial, central_gan and dgan segmentation on the real test split."""
    from dgan.experiment import ExperimentConfig, ExperimentSetupError, run_experiment
    from dgan.report import write_report
    from dgan.segment import SegConfig

    setup_logging("INFO", "rich", "experiment")
    if (slow := slow_bf16_warning(precision.value, device)) is not None:
        console.print(f"[yellow]{slow}[/yellow]")
    modes = tuple(dict.fromkeys(m.value for m in (feedback or [DEFAULT_MODE])))
    methods = tuple(m.value for m in (gan_methods or list(GanMethod)))
    for hint, given in (("--local", local), ("--local-from", local_from)):
        if given and not department_models:
            raise typer.BadParameter("asks for department models: drop --no-department-models", param_hint=hint)
    hows = tuple(dict.fromkeys(h.value for h in (local or [LocalHow.pretrain]))) if department_models else ()
    sources = tuple(dict.fromkeys(m.value for m in (local_from or [LocalFrom.dgan])))
    if local_from and (missing := [m for m in sources if m not in (*methods, LocalFrom.real_all.value)]):
        raise typer.BadParameter(f"{missing[0]} is not among the GAN methods run (--gan-method)",
                                 param_hint="--local-from")
    folder = pairs_folder(data, out.parent, size if not quick else 64, keep_classes=True)
    variant = data.partition(":")[2] if data is not None and data.startswith("scenes:") else "buildings"
    common = dict(out=out, data=folder, scene_variant=variant, partition=partition.value, nodes=nodes,
                  feedback=modes, lambda_l1=lambda_l1, lambda_semantic=lambda_semantic, label_mix=label_mix,
                  lambda_colour=lambda_colour,
                  oasis_optim=oasis_optim, gan_methods=methods, with_sync=with_sync, test=test, groups=groups,
                  update_every=update_every, async_beta1=async_beta1, pipeline=pipeline, ema=ema, snapshots=snapshots,
                  judged=judged, local=hows, local_from=sources,
                  local_share=local_share,
                  diffaugment=diffaugment,
                  grad_dtype=grad_dtype.value, fake_dtype=fake_dtype.value, weighting=weighting.value,
                  device=device, precision=precision.value, channels_last=channels_last, d_steps=d_steps)
    try:
        if quick:
            cfg = ExperimentConfig(**common, size=64, gan_steps=30, g_width=16, d_width=16, seeds=1, scenes=96,
                                   seg=SegConfig(steps=60, eval_every=20, positive_share=positive_share,
                                                 standardize=seg_standardize, photometric=seg_photometric),
                                   samples_per_mask=1, quick=True, synthetic_photometric=synthetic_photometric,
                                   local_photometric=local_photometric)
        else:
            seg = SegConfig(steps=seg_steps, standardize=seg_standardize, photometric=seg_photometric,
                            positive_share=positive_share)
            cfg = ExperimentConfig(**common, size=size, gan_steps=gan_steps, seg=seg, seeds=seeds, gan_seeds=gan_seeds,
                                   samples_per_mask=samples_per_mask, synthetic_photometric=synthetic_photometric,
                                   local_photometric=local_photometric)
        results = run_experiment(cfg)
    except ExperimentSetupError as exc:  # one line, not a traceback
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print((out / "results.md").read_text())
    console.print(f"report: {write_report(out)}")
    del results


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A folder written by `dgan run` or `dgan experiment`.")],
           out: Annotated[Path | None, typer.Option(help="Where to write (default RUN_DIR/report.html).")] = None,
           ) -> None:
    """Write one self-contained HTML report: config, curves, staleness, throughput, samples, results."""
    from dgan.report import write_report

    if not run_dir.is_dir():
        console.print(f"[red]{run_dir} is not a folder[/red]")
        raise typer.Exit(2)
    console.print(f"report: {write_report(run_dir, out)}")


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="`dgan experiment --out` folders (or their results.json), as "
                                                   "PATH or LABEL=PATH; one label over several test splits "
                                                   "pools their pairs.")],
    method: Annotated[list[str] | None, typer.Option(help="Only these GAN methods (repeat; default: all).")] = None,
    baseline: Annotated[str | None, typer.Option(help="LABEL:METHOD to compare against (default: the first run's "
                                                      "first method).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the comparison here.")] = None,
) -> None:
    """Compare GAN methods across experiment runs, paired by GAN seed and segmentation seed."""
    import json

    from dgan.compare_runs import CompareError, load_run, parse_run_arg, strict_json
    from dgan.compare_runs import compare as compare_runs
    from dgan.compare_table import print_comparison

    try:
        loaded = [load_run(path, label) for label, path in map(parse_run_arg, runs)]
        result = compare_runs(loaded, method, baseline)
    except CompareError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    print_comparison(console, result)
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(strict_json(result), indent=1, allow_nan=False))
        except OSError as exc:
            console.print(f"[red]could not write {json_out}: {exc}[/red]")
            raise typer.Exit(2) from None
        console.print(f"wrote {json_out}")
