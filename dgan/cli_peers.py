"""The long-running processes: broker, generator, node, monitor; and their keys."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dgan.choices import FakeDtype, GanMode, GradDtype, Precision, StalePolicy, SynthWeights, TrainMode, Weighting
from dgan.cli_app import (
    BrokerKey,
    ChannelsLast,
    DataOption,
    Device,
    Feedback,
    Heartbeat,
    KeyFile,
    LambdaColour,
    LambdaL1,
    LambdaSemantic,
    LogFormat,
    LogLevel,
    Quiet,
    Threads,
    app,
    console,
    curve_socket_setup,
    keys_app,
    set_torch_threads,
)
from dgan.feedback import DEFAULT_MODE, MAX_D_STEPS, default_d_steps
from dgan.logs import setup_logging
from dgan.training.staleness import DISCOUNT_CAP

log = logging.getLogger("dgan")


@app.command()
def broker(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 for other hosts).")] = "127.0.0.1",
    node_port: Annotated[int, typer.Option(help="ROUTER port for nodes.")] = 5555,
    generator_port: Annotated[int, typer.Option(help="ROUTER port for the generator.")] = 5556,
    pub_port: Annotated[int, typer.Option(help="XPUB port for status broadcasts and monitors.")] = 5557,
    heartbeat: Annotated[float, typer.Option(help="Heartbeat interval, seconds.")] = 2.5,
    liveness: Annotated[int, typer.Option(help="Missed heartbeats before a peer expires.")] = 3,
    hwm: Annotated[int, typer.Option(help="High-water mark per socket, messages.")] = 64,
    max_message_mb: Annotated[float, typer.Option(help="Largest message accepted, MiB.")] = 256.0,
    record: Annotated[Path | None, typer.Option(help="Append every routed message to this log.")] = None,
    flush_interval: Annotated[float, typer.Option(help="--record: seconds between flushes.")] = 0.5,
    rotate_mb: Annotated[float, typer.Option(help="--record: start a new file past this size (0 = never).")] = 0.0,
    secret_key: Annotated[Path | None, typer.Option(help="CURVE: the broker's .key_secret file.")] = None,
    authorized_keys: Annotated[Path | None, typer.Option(
        help="CURVE: the operator's allowlist file (`dgan keys authorize`): role, name and key per line.")] = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Run the ZeroMQ broker between the generator and the nodes."""
    from broker import Broker, BrokerConfig
    from dgan.protocol import Limits

    setup_logging(log_level, log_format, "broker")
    cfg = BrokerConfig(host=host, node_port=node_port, generator_port=generator_port, pub_port=pub_port,
                       heartbeat_interval=heartbeat, liveness=liveness, hwm=hwm,
                       limits=Limits(max_message_bytes=int(max_message_mb * 1024 * 1024)), record=record,
                       flush_interval=flush_interval, rotate_bytes=int(rotate_mb * 1024 * 1024),
                       secret_key=secret_key, authorized_keys=authorized_keys)
    try:
        b = Broker(cfg)
    except Exception as exc:
        console.print(f"[red]cannot start the broker:[/red] {exc}")
        raise typer.Exit(1) from None
    table = Table(title="dgan broker", show_header=True)
    table.add_column("socket")
    table.add_column("endpoint")
    table.add_row("nodes (ROUTER)", cfg.node_endpoint)
    table.add_row("generator (ROUTER)", cfg.generator_endpoint)
    table.add_row("broadcast (XPUB)", cfg.pub_endpoint)
    table.add_row("record", str(record) if record else "off")
    table.add_row("security", f"CURVE, {len(b.allowlist or {})} authorized keys" if secret_key else
                  "[yellow]plain TCP: not encrypted, not authenticated[/yellow]")
    console.print(table)
    from broker.records import RecordingFailed

    b.install_signal_handlers()
    try:
        b.serve()
    except RecordingFailed as exc:
        console.print(f"[red]the message log failed, so the broker stopped:[/red] {exc}")
        raise typer.Exit(3) from None



@keys_app.command("generate")
def keys_generate(
    name: Annotated[str, typer.Argument(help="A label for the files: NAME.key and NAME.key_secret.")],
    role: Annotated[str, typer.Option(help="node, generator, monitor or broker (a label only: the broker's operator "
                                           "decides with `dgan keys authorize`).")] = "node",
    directory: Annotated[Path, typer.Option("--dir", help="Where to write NAME.key and NAME.key_secret.")] = Path(
        "keys"),
) -> None:
    """Write a CURVE key pair; give NAME.key to the broker's operator to authorize."""
    from dgan.security import generate_keys

    try:
        public, secret = generate_keys(directory, name, role)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"public: {public}  (give it to the broker's operator: `dgan keys authorize {public.name} "
                  f"--role {role} --name {name} --allowlist FILE`)\n"
                  f"secret: {secret}  (keep on this machine only)")


@keys_app.command("authorize")
def keys_authorize(
    key_file: Annotated[Path, typer.Argument(help="The peer's public NAME.key file.")],
    role: Annotated[str, typer.Option(help="The role you grant: node, generator or monitor.")],
    name: Annotated[str, typer.Option(help="The name this key may use (nodes: its --name).")],
    allowlist: Annotated[Path, typer.Option(help="The broker's --authorized-keys file.")] = Path("authorized_keys"),
) -> None:
    """Operator: let one public key in, with the role and name you decide (its own metadata is ignored)."""
    from dgan.security import KeyError_, authorize

    try:
        who = authorize(allowlist, key_file, role, name)
    except KeyError_ as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{allowlist}: {key_file.name} may connect as {who.role} {who.name!r}")



@app.command()
def generator(
    broker: Annotated[str, typer.Option(help="The broker's generator endpoint.")] = "tcp://127.0.0.1:5556",
    out: Annotated[Path, typer.Option(help="Folder for checkpoints, samples, synthetic set, run.json.")] = Path(
        "runs/latest"),
    steps: Annotated[int, typer.Option(help="Generator updates to train for.")] = 300,
    mode: Annotated[TrainMode, typer.Option(help="async, or sync (wait for every live node each round).")] = (
        TrainMode.async_),
    image_size: Annotated[int, typer.Option(help="Image side, pixels.")] = 128,
    num_classes: Annotated[int, typer.Option(help="2 = binary masks; more = one-hot classes.")] = 2,
    g_width: Annotated[int, typer.Option(help="Generator width.")] = 32,
    g_depth: Annotated[int, typer.Option(help="Generator depth (down-samplings).")] = 5,
    d_width: Annotated[int, typer.Option(help="Discriminator width (sent to nodes).")] = 32,
    gan_mode: Annotated[GanMode, typer.Option(help="The adversarial term's form.")] = GanMode.vanilla,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-4,
    beta1: Annotated[float, typer.Option(help="Adam beta1 (OASIS uses 0).")] = 0.5,
    update_every: Annotated[str, typer.Option(help="async: feedbacks per update; 0 = one per node alive "
                                                   "(buffered async); auto = as many as keep the staleness near "
                                                   "half of --max-staleness, given the requests in flight (for "
                                                   "nodes on slow links with --pipeline auto).")] = "1",
    ema: Annotated[float, typer.Option(help="Decay of the moving average of G's weights that synthesis and "
                                            "samples use (0 = off).")] = 0.0,
    snapshots: Annotated[int, typer.Option(help="Keep G's weights every --snapshot-every steps, the last this many; "
                                                "synthesis spreads each set over them (0 = off; every checkpoint "
                                                "carries them).")] = 0,
    snapshot_every: Annotated[int, typer.Option(help="Steps between snapshots.")] = 100,
    weighting: Annotated[Weighting, typer.Option(help="Feedback weight: by node dataset size, or equal.")] = (
        Weighting.size),
    max_staleness: Annotated[int, typer.Option(help="Feedback staler than this is dropped (--stale-policy drop) "
                                                    "or discounted.")] = 8,
    stale_policy: Annotated[StalePolicy, typer.Option(
        help=f"Past --max-staleness: drop, or discount (apply at weight bound/staleness, up to {DISCOUNT_CAP}x the "
        "bound) so a node on a slow link still counts.")] = StalePolicy.drop,
    fake_dtype: Annotated[FakeDtype, typer.Option(help="Fakes on the wire.")] = FakeDtype.float16,
    precision: Annotated[Precision, typer.Option(
        help="G's forward pass: fp32; bf16 autocast; or auto, bf16 only on CUDA or a CPU with native bf16 "
        "(AVX512-BF16/AMX), where it pays: emulated bf16 measured 0.045x fp32.")] = Precision.fp32,
    channels_last: ChannelsLast = False,
    compile_g: Annotated[bool, typer.Option("--compile", help="torch.compile G's forward (about 35 s to compile; "
                                                              "0.79x on a 2-core CPU).")] = False,
    seed: int = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    sample_every: Annotated[int, typer.Option(help="Steps between sample grids.")] = 50,
    synthesize: Annotated[bool, typer.Option(help="Synthesise every uploaded mask at the end.")] = True,
    synthesis_weights: Annotated[SynthWeights, typer.Option(
        help="The final set from: auto (the snapshots when --snapshots is on, else the EMA when --ema is on, else "
        "the last weights), raw, ema, snapshots, or judged (the weights where the nodes' transfer_iou peaked).")
    ] = SynthWeights.auto,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/latest.pt.")] = False,
    idle_timeout: Annotated[float, typer.Option(help="End early after this long with no node (0 = never).")] = 0.0,
    tensorboard: Annotated[Path | None, typer.Option(help="Also write scalars and sample grids for "
                                                          "TensorBoard here.")] = None,
    max_bad_messages: Annotated[int, typer.Option(help="Ignore a node after this many invalid messages.")] = 50,
    key: KeyFile = None,
    broker_key: BrokerKey = None,
    heartbeat: Heartbeat = 2.5,
    threads: Threads = 1,
    device: Device = "cpu",
    quiet: Quiet = False,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Run the central generator: serve fakes, apply the nodes' gradients, synthesise at the end."""
    import uuid

    from dgan.networks import ModelConfig
    from dgan.training.checkpoints import CheckpointError
    from dgan.training.generator import GeneratorTrainer, TrainConfig
    from dgan.transport.zmq_link import ZmqGeneratorLink
    from nodes.generator_service import GeneratorService, ServiceConfig

    setup_logging(log_level, log_format, "generator")
    set_torch_threads(threads)
    model = ModelConfig(image_size=image_size, num_classes=num_classes, g_width=g_width, g_depth=g_depth,
                        d_width=d_width, gan_mode=gan_mode.value)
    if synthesis_weights == SynthWeights.ema and ema <= 0:
        console.print("[red]--synthesis-weights ema needs --ema DECAY (a moving average to synthesise from)[/red]")
        raise typer.Exit(2)
    if synthesis_weights == SynthWeights.snapshots and snapshots <= 0:
        console.print("[red]--synthesis-weights snapshots needs --snapshots K (the weights to synthesise from)[/red]")
        raise typer.Exit(2)
    try:
        word = update_every.strip().lower()
        every = -1 if word == "auto" else int(word) if re.fullmatch(r"[0-9]{1,9}", word) else -2  # -2: refused
        train = TrainConfig(steps=steps, lr=lr, beta1=beta1, mode=mode.value, update_every=every, ema=ema,
                            snapshots=snapshots, snapshot_every=snapshot_every, weighting=weighting.value,
                            max_staleness=max_staleness, stale_policy=stale_policy.value,
                            fake_dtype=fake_dtype.value,
                            seed=seed, device=device, precision=precision.value, channels_last=channels_last,
                            compile=compile_g)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]" if every != -2 else
                      f"[red]--update-every takes a count >= 0 or auto, got {update_every!r}[/red]")
        raise typer.Exit(2) from None
    if train.mode == "sync" and every != 1:
        console.print("[yellow]--update-every is ignored in sync mode: each round ends in one step[/yellow]")
    trainer = GeneratorTrainer(model, train)
    run_id = uuid.uuid4().hex[:12]
    latest = out / "checkpoints" / "latest.pt"
    if resume:
        if not latest.exists():
            console.print(f"[red]--resume: no checkpoint at {latest}[/red]")
            raise typer.Exit(1)
        try:
            trainer.load(latest)
        except CheckpointError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        log.info("resumed from %s at step %d", latest, trainer.step)
    writer = None
    if tensorboard is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print("[red]--tensorboard needs the tensorboard package: pip install tensorboard[/red]")
            raise typer.Exit(2) from None
        writer = SummaryWriter(str(tensorboard))
    from dgan.live import render

    live = None
    if console.is_terminal and not quiet and log_format == "rich":
        from rich.live import Live

        live = Live(render({}, {}, f"dgan generator {run_id}"), console=console, refresh_per_second=4)
        live.start()
    link = ZmqGeneratorLink(broker, heartbeat_interval=heartbeat, socket_setup=curve_socket_setup(key, broker_key))
    service = GeneratorService(link, trainer, ServiceConfig(
        out=out, run_id=run_id, checkpoint_every=checkpoint_every, sample_every=sample_every, synthesize=synthesize,
        idle_timeout=idle_timeout, tensorboard=writer, max_bad_messages=max_bad_messages,
        synthesis_weights=synthesis_weights.value,
        on_status=(lambda st: live.update(render(st, {}, f"dgan generator {run_id}"))) if live else None))
    import signal

    from dgan.stop_signals import parent_gone

    def stop(signum: int, _frame: Any) -> None:
        orphaned = parent_gone()  # the SIGTERM of a dead `dgan run` (PR_SET_PDEATHSIG, or the watcher thread)
        log.warning("%s: finishing the run at step %d%s", signal.Signals(signum).name, trainer.step,
                    " (the parent is gone: no synthetic set)" if orphaned else "")
        service.request_stop(synthesize=not orphaned)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        summary = service.run()
    finally:
        link.close()
        if writer is not None:
            writer.close()
        if live is not None:
            live.stop()
    console.print(f"generator done: {summary['steps']} steps, {summary['synthetic_images']} synthetic images in {out}")


@app.command()
def node(
    name: Annotated[str, typer.Option(help="This node's unique name.")],
    broker: Annotated[str, typer.Option(help="The broker's node endpoint.")] = "tcp://127.0.0.1:5555",
    data: DataOption = "scenes",
    count: Annotated[int, typer.Option(help="With --data scenes: how many scenes.")] = 200,
    image_size: Annotated[int, typer.Option(help="Size to load data at (the run's size).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = 8,
    pipeline: Annotated[str, typer.Option(help="Requests kept in flight: a number, or auto (at least 2, deeper "
                                               "to cover the measured round trip, up to what the generator keeps "
                                               "per node).")] = "2",
    grad_dtype: Annotated[GradDtype, typer.Option(help="Gradients on the wire.")] = GradDtype.float16,
    delay: Annotated[float, typer.Option(help="Artificial seconds per batch (slow-site emulation).")] = 0.0,
    max_batches: Annotated[int, typer.Option(help="Leave after this many batches (0 = stay until the run ends).")] = 0,
    feedback: Feedback = DEFAULT_MODE,
    lambda_l1: LambdaL1 = 100.0,
    lambda_semantic: LambdaSemantic = 20.0,
    lambda_colour: LambdaColour = 0.0,
    label_mix: Annotated[float, typer.Option(help="--feedback segmentation: LabelMix weight (OASIS: 10; 0 = "
                                                  "off).")] = 0.0,
    d_lr: Annotated[float, typer.Option(help="Discriminator Adam learning rate (OASIS: 4e-4).")] = 2e-4,
    d_beta1: Annotated[float, typer.Option(help="Discriminator Adam beta1 (OASIS: 0).")] = 0.5,
    d_warmup: Annotated[int, typer.Option(help="--feedback segmentation/semantic: steps that train the segmenter "
                                               "on this node's own pairs before its first feedback.")] = 100,
    d_steps: Annotated[int | None, typer.Option(min=1, max=MAX_D_STEPS, show_default="2; 1 in segmentation mode", help=(
        "PatchGAN modes: discriminator steps per feedback, each on a real batch against the same fakes. An "
        "async generator that steps on every feedback from N nodes in turn moves every D's fakes N times "
        "between its steps: N keeps each D at the generator's pace (sync rounds already do: give a node of a "
        "sync run 1)."))] = None,
    seed: int = 0,
    stats: Annotated[Path | None, typer.Option(help="Write this node's timing and byte counts here (JSON).")] = None,
    save_samples: Annotated[Path | None, typer.Option(help="Save mask | real | synthetic grids here (stays "
                                                           "local).")] = None,
    sample_every: Annotated[int, typer.Option(help="Batches between saved grids.")] = 50,
    judge: Annotated[bool, typer.Option(help="Train a small segmenter on this node's pairs and report label_iou, "
                                             "its IoU on the fakes against their masks (one number per batch).")
                     ] = True,
    transfer_every: Annotated[int, typer.Option(help="With --judge: every this many batches, report transfer_iou, "
                                                     "the IoU on this node's real pairs of a fresh small segmenter "
                                                     "trained on that window's fakes (0 = never).")] = 16,
    diffaugment: Annotated[bool, typer.Option(help="DiffAugment (color, translation, cutout) before the "
                                                  "PatchGAN discriminator: for small departments.")] = False,
    positive_crops: Annotated[float, typer.Option(help="Sparse targets (ships): share of crops placed on a "
                                                       "foreground pixel; the rest stay uniform (0 = off).")] = 0.0,
    precision: Annotated[Precision, typer.Option(
        help="D's passes: fp32; bf16 autocast; or auto, bf16 only on CUDA or a CPU with native bf16.")
                         ] = Precision.fp32,
    key: KeyFile = None,
    broker_key: BrokerKey = None,
    heartbeat: Heartbeat = 2.5,
    threads: Threads = 1,
    device: Device = "cpu",
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Run a discriminator node on private data; only gradients and losses leave it."""
    from dgan import protocol as P
    from dgan.data.shards import DataError, resolve_data
    from dgan.feedback import FeedbackConfig
    from dgan.transport.zmq_link import ZmqNodeLink
    from nodes.discriminator_node import DiscriminatorNode, NodeConfig

    if not P.valid_name(name):
        raise typer.BadParameter(f"{name!r}: a node needs {P.NAME_RULE}", param_hint="--name")
    if not 0.0 <= positive_crops <= 1.0:
        raise typer.BadParameter(f"must be in [0, 1], got {positive_crops}", param_hint="--positive-crops")
    if transfer_every < 0:
        raise typer.BadParameter(f"must be >= 0, got {transfer_every}", param_hint="--transfer-every")
    auto = pipeline.strip().lower() == "auto"
    depth = 2 if auto else int(pipeline) if pipeline.strip().isdigit() else 0
    if not 1 <= depth <= 64:
        raise typer.BadParameter(f"a number of requests from 1 to 64, or auto; got {pipeline!r}",
                                 param_hint="--pipeline")
    setup_logging(log_level, log_format, name)
    set_torch_threads(threads)
    try:
        recipe = FeedbackConfig(feedback, lambda_l1=lambda_l1, label_mix=label_mix, lambda_semantic=lambda_semantic,
                                lr=d_lr, beta1=d_beta1, warmup=d_warmup, diffaugment=diffaugment,
                                lambda_colour=lambda_colour,
                                d_steps=default_d_steps(feedback) if d_steps is None else d_steps)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        images, masks = resolve_data(data, image_size, count=count, seed=seed)
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    link = ZmqNodeLink(broker, name, hello_meta=DiscriminatorNode.hello_meta(images, recipe),
                       heartbeat_interval=heartbeat,
                       socket_setup=curve_socket_setup(key, broker_key))
    n = DiscriminatorNode(link, images, masks, NodeConfig(name=name, batch_size=batch_size, pipeline=depth,
                                                          auto_pipeline=auto,
                                                          grad_dtype=grad_dtype.value, delay=delay, seed=seed,
                                                          device=device, precision=precision.value,
                                                          feedback=recipe, samples_dir=save_samples,
                                                          sample_every=sample_every, judge=judge,
                                                          transfer_every=transfer_every,
                                                          positive_share=positive_crops or None))
    try:
        result = n.run(max_batches=max_batches or None)
    except KeyboardInterrupt:
        result = n.stats
    finally:
        link.close()
    log.info("node %s done: %d batches, %d samples", name, result.batches, result.samples)
    if stats is not None:
        import json

        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps({**result.to_dict(), "link": dict(link.counters)}, indent=2))
    if n.fatal:
        console.print(f"[red]{n.fatal}[/red]")
        raise typer.Exit(2)



@app.command("monitor")
def monitor_cmd(
    endpoint: Annotated[str, typer.Argument(help="The broker's broadcast endpoint, e.g. tcp://HOST:5557.")] = (
        "tcp://127.0.0.1:5557"),
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    key: KeyFile = None,
    broker_key: BrokerKey = None,
) -> None:
    """Watch a running broker's broadcasts: the same live panel, read-only, from any host."""
    from dgan.live import monitor

    setup_logging("WARNING")
    sub = monitor(endpoint, duration, socket_setup=curve_socket_setup(key, broker_key))
    console.print(f"{sub.updates} status updates received" + (" (run ended)" if sub.ended else ""))
