"""The ``dgan`` command line."""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dgan import __version__
from dgan.cli_attack import attack_app
from dgan.feedback import DEFAULT_MODE, FeedbackMode
from dgan.logs import setup_logging

app = typer.Typer(help="dgan: distributed asynchronous discriminator GAN for remote-sensing segmentation.",
                  no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(attack_app, name="attack")
keys_app = typer.Typer(help="CURVE keys for encrypted, authenticated runs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
log = logging.getLogger("dgan")

LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="rich, plain or json.")]
Feedback = Annotated[FeedbackMode, typer.Option(
    "--feedback", help="What a node's gradient is of: segmentation (OASIS; private), adversarial (private) or l1 "
    "(the paper's pix2pix L1; reveals the node's images, see docs/security.md).")]


class GanMethod(str, enum.Enum):
    central_gan = "central_gan"
    dgan = "dgan"


LambdaL1 = Annotated[float, typer.Option("--lambda-l1", help="Weight of the L1 term (--feedback l1 only).")]


def _version(value: bool) -> None:
    if value:
        console.print(f"dgan {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """dgan: learn one generator from images that stay at their nodes."""


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
    authorized_keys: Annotated[Path | None, typer.Option(help="CURVE: folder of allowed public .key files.")] = None,
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
    b.install_signal_handlers()
    b.serve()


KeyFile = Annotated[Path | None, typer.Option("--key", help="CURVE: this process's .key_secret file.")]
BrokerKey = Annotated[Path | None, typer.Option("--broker-key", help="CURVE: the broker's public .key file.")]


def _curve(key: Path | None, broker_key: Path | None) -> Any:
    """socket_setup for a link, or None for plain TCP; a clear exit on bad key files."""
    if key is None and broker_key is None:
        return None
    if key is None or broker_key is None:
        console.print("[red]CURVE needs both --key and --broker-key[/red]")
        raise typer.Exit(2)
    from dgan.security import KeyError_, client_setup

    try:
        return client_setup(key, broker_key)
    except KeyError_ as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@keys_app.command("generate")
def keys_generate(
    name: Annotated[str, typer.Argument(help="Whose key: a node name, 'generator', 'broker', ...")],
    role: Annotated[str, typer.Option(help="node, generator, monitor or broker.")] = "node",
    directory: Annotated[Path, typer.Option("--dir", help="Where to write NAME.key and NAME.key_secret.")] = Path(
        "keys"),
) -> None:
    """Write a CURVE key pair; copy NAME.key into the broker's --authorized-keys folder."""
    from dgan.security import generate_keys

    try:
        public, secret = generate_keys(directory, name, role)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"public: {public}  (give to the broker's --authorized-keys folder)\n"
                  f"secret: {secret}  (keep on this machine only)")


Quiet = Annotated[bool, typer.Option(help="No live panel and no summary table.")]
Quick = Annotated[bool, typer.Option(help="A short run (about a minute): small images, few steps.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the result here.")]
Heartbeat = Annotated[float, typer.Option(help="Heartbeat interval, seconds.")]
Threads = Annotated[int, typer.Option(help="torch threads in this process.")]
Device = Annotated[str, typer.Option(help="cpu or cuda.")]


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


@app.command()
def generator(
    broker: Annotated[str, typer.Option(help="The broker's generator endpoint.")] = "tcp://127.0.0.1:5556",
    out: Annotated[Path, typer.Option(help="Folder for checkpoints, samples, synthetic set, run.json.")] = Path(
        "runs/latest"),
    steps: Annotated[int, typer.Option(help="Generator updates to train for.")] = 300,
    mode: Annotated[str, typer.Option(help="async, or sync (wait for every live node each round).")] = "async",
    image_size: Annotated[int, typer.Option(help="Image side, pixels.")] = 128,
    num_classes: Annotated[int, typer.Option(help="2 = binary masks; more = one-hot classes.")] = 2,
    g_width: Annotated[int, typer.Option(help="Generator width.")] = 32,
    g_depth: Annotated[int, typer.Option(help="Generator depth (down-samplings).")] = 5,
    d_width: Annotated[int, typer.Option(help="Discriminator width (sent to nodes).")] = 32,
    gan_mode: Annotated[str, typer.Option(help="vanilla or lsgan.")] = "vanilla",
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-4,
    beta1: Annotated[float, typer.Option(help="Adam beta1 (OASIS uses 0).")] = 0.5,
    update_every: Annotated[int, typer.Option(help="async: feedbacks per update.")] = 1,
    weighting: Annotated[str, typer.Option(help="size or equal.")] = "size",
    max_staleness: Annotated[int, typer.Option(help="Drop feedback staler than this.")] = 8,
    fake_dtype: Annotated[str, typer.Option(help="float16, float32 or uint8 on the wire.")] = "float16",
    seed: int = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    sample_every: Annotated[int, typer.Option(help="Steps between sample grids.")] = 50,
    synthesize: Annotated[bool, typer.Option(help="Synthesise every uploaded mask at the end.")] = True,
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
    from dgan.training.generator import CheckpointError, GeneratorTrainer, TrainConfig
    from dgan.transport.zmq_link import ZmqGeneratorLink
    from nodes.generator_service import GeneratorService, ServiceConfig

    setup_logging(log_level, log_format, "generator")
    _threads(threads)
    model = ModelConfig(image_size=image_size, num_classes=num_classes, g_width=g_width, g_depth=g_depth,
                        d_width=d_width, gan_mode=gan_mode)
    train = TrainConfig(steps=steps, lr=lr, beta1=beta1, mode=mode, update_every=update_every, weighting=weighting,
                        max_staleness=max_staleness, fake_dtype=fake_dtype, seed=seed, device=device)
    if mode not in ("async", "sync"):
        raise typer.BadParameter("--mode must be async or sync")
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
    link = ZmqGeneratorLink(broker, heartbeat_interval=heartbeat, socket_setup=_curve(key, broker_key))
    service = GeneratorService(link, trainer, ServiceConfig(
        out=out, run_id=run_id, checkpoint_every=checkpoint_every, sample_every=sample_every, synthesize=synthesize,
        idle_timeout=idle_timeout, tensorboard=writer, max_bad_messages=max_bad_messages,
        on_status=(lambda st: live.update(render(st, {}, f"dgan generator {run_id}"))) if live else None))
    import signal

    def stop(signum: int, _frame: Any) -> None:
        log.warning("%s: finishing the run at step %d", signal.Signals(signum).name, trainer.step)
        service.request_stop()

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
    data: Annotated[str, typer.Option(help="'scenes', a shard .json, or a folder with images/ and masks/.")] = (
        "scenes"),
    count: Annotated[int, typer.Option(help="With --data scenes: how many scenes.")] = 200,
    image_size: Annotated[int, typer.Option(help="Size to load data at (the run's size).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = 8,
    pipeline: Annotated[int, typer.Option(help="Requests kept in flight.")] = 2,
    grad_dtype: Annotated[str, typer.Option(help="float16 or float32 on the wire.")] = "float16",
    delay: Annotated[float, typer.Option(help="Artificial seconds per batch (slow-site emulation).")] = 0.0,
    feedback: Feedback = DEFAULT_MODE,
    lambda_l1: LambdaL1 = 100.0,
    label_mix: Annotated[float, typer.Option(help="--feedback segmentation: LabelMix weight (OASIS: 10; 0 = "
                                                  "off).")] = 0.0,
    d_lr: Annotated[float, typer.Option(help="Discriminator Adam learning rate (OASIS: 4e-4).")] = 2e-4,
    d_beta1: Annotated[float, typer.Option(help="Discriminator Adam beta1 (OASIS: 0).")] = 0.5,
    d_warmup: Annotated[int, typer.Option(help="--feedback segmentation: steps that train the segmenter on this "
                                               "node's own pairs before its first feedback.")] = 100,
    seed: int = 0,
    stats: Annotated[Path | None, typer.Option(help="Write this node's timing and byte counts here (JSON).")] = None,
    save_samples: Annotated[Path | None, typer.Option(help="Save mask | real | synthetic grids here (stays "
                                                           "local).")] = None,
    sample_every: Annotated[int, typer.Option(help="Batches between saved grids.")] = 50,
    key: KeyFile = None,
    broker_key: BrokerKey = None,
    heartbeat: Heartbeat = 2.5,
    threads: Threads = 1,
    device: Device = "cpu",
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Run a discriminator node on private data; only gradients and losses leave it."""
    from dgan.data.shards import DataError, resolve_data
    from dgan.feedback import FeedbackConfig
    from dgan.transport.zmq_link import ZmqNodeLink
    from nodes.discriminator_node import DiscriminatorNode, NodeConfig

    setup_logging(log_level, log_format, name)
    _threads(threads)
    try:
        recipe = FeedbackConfig(feedback, lambda_l1=lambda_l1, label_mix=label_mix, lr=d_lr, beta1=d_beta1,
                                warmup=d_warmup)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        images, masks = resolve_data(data, image_size, count=count, seed=seed)
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    link = ZmqNodeLink(broker, name, hello_meta=DiscriminatorNode.hello_meta(images, recipe),
                       heartbeat_interval=heartbeat,
                       socket_setup=_curve(key, broker_key))
    n = DiscriminatorNode(link, images, masks, NodeConfig(name=name, batch_size=batch_size, pipeline=pipeline,
                                                          grad_dtype=grad_dtype, delay=delay, seed=seed,
                                                          device=device, feedback=recipe, samples_dir=save_samples,
                                                          sample_every=sample_every))
    try:
        result = n.run()
    except KeyboardInterrupt:
        result = n.stats
    finally:
        link.close()
    log.info("node %s done: %d batches, %d samples", name, result.batches, result.samples)
    if stats is not None:
        import json

        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps(result.to_dict(), indent=2))


def _print_summary(summary: dict) -> None:
    table = Table(title=f"dgan run {summary['run_id']}: {summary['steps']} steps in {summary['wall_s']} s")
    for col in ("node", "feedback", "pairs", "feedbacks", "samples", "staleness mean/max", "last losses"):
        table.add_column(col)
    for name, n in summary["nodes"].items():
        losses = ", ".join(f"{k}={v:.3f}" for k, v in n["losses"].items() if k in ("d_real", "d_fake", "g_adv",
                                                                                   "g_l1"))
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
    data: Annotated[Path | None, typer.Option(help="Folder with images/ and masks/ (default: built-in scenes).")] = (
        None),
    partition: Annotated[str, typer.Option(help="iid or size.")] = "iid",
    scenes: Annotated[int, typer.Option(help="Built-in scenes to split across the nodes.")] = 800,
    record: Annotated[Path | None, typer.Option(help="Broker message log.")] = None,
    image_size: int = 128,
    g_width: int = 32,
    d_width: int = 32,
    batch_size: int = 8,
    mode: Annotated[str, typer.Option(help="async or sync.")] = "async",
    feedback: Feedback = DEFAULT_MODE,
    lambda_l1: LambdaL1 = 100.0,
    threads: Threads = 1,
    device: Device = "cpu",
    seed: int = 0,
    quiet: Quiet = False,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Start broker, generator and N nodes as processes, train, synthesise, stop them all."""
    from dgan.run import RunConfig

    setup_logging(log_level, log_format, "run")
    cfg = RunConfig(nodes=nodes, steps=steps, out=out, data=data, partition=partition, scenes=scenes, record=record,
                    image_size=image_size, g_width=g_width, d_width=d_width, batch_size=batch_size, mode=mode,
                    threads=threads, device=device, seed=seed, feedback=feedback.value, lambda_l1=lambda_l1)
    _run_with_view(cfg, quiet, log_format, f"dgan run: {nodes} nodes, {steps} steps, feedback {feedback.value}")


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
) -> None:
    """`dgan run` on the built-in scenes with 4 nodes: train, synthesise, summarise."""
    from dgan.demo import segment_synthetic
    from dgan.report import write_report
    from dgan.run import RunConfig

    setup_logging("INFO", "rich", "demo")
    cfg = RunConfig(nodes=nodes, steps=steps, out=out, scenes=800, sample_every=50, feedback=feedback.value)
    _run_with_view(cfg, False, "rich", f"dgan demo: {nodes} nodes, {steps} steps on built-in scenes", report=False)
    console.print(f"sample grids (mask | synthetic): {out / 'samples'}; synthetic set: {out / 'synthetic'}")
    with console.status(f"segmentation: a U-Net trained on the {len(list((out / 'synthetic' / 'images').glob('*')))}"
                        " synthetic images only…"):
        seg = segment_synthetic(out)
    console.print(f"building IoU on 64 held-out scenes no node saw: [bold]{seg['iou']:.3f}[/bold] "
                  f"(F1 {seg['f1']:.3f}, precision {seg['precision']:.3f}, recall {seg['recall']:.3f}); "
                  f"predictions: {out / 'predictions' / 'dgan.png'}")
    console.print(f"report: {write_report(out)}")


segment_app = typer.Typer(help="Segmentation: train a U-Net on pairs, evaluate on real data.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")


@segment_app.command("train")
def segment_train(
    data: Annotated[Path, typer.Option(help="Folder with images/ and masks/ (real or a run's synthetic/).")],
    out: Annotated[Path, typer.Option(help="Where to save the model (.pt).")],
    val: Annotated[Path | None, typer.Option(help="Validation pairs: the model kept is the best here.")] = None,
    size: int = 128,
    steps: int = 1000,
    batch_size: int = 8,
    width: int = 16,
    seed: int = 0,
    threads: Threads = 2,
) -> None:
    """Train a segmentation U-Net."""
    from dgan.data.loaders import load_pairs_folder
    from dgan.data.shards import DataError
    from dgan.segment import SegConfig, save_model, train_segmenter

    setup_logging("INFO")
    _threads(threads)
    try:
        train = load_pairs_folder(data, size)
        val_set = load_pairs_folder(val, size) if val else None
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    cfg = SegConfig(width=width, steps=steps, batch_size=batch_size, seed=seed)
    model, info = train_segmenter(train.images, train.masks, cfg,
                                  val=(val_set.images, val_set.masks) if val_set else None)
    save_model(model, cfg, out)
    console.print(f"saved {out}: {info['train_seconds']:.0f} s, best step {info['best_step']}, "
                  f"val IoU {info['best_val_iou']}")


@segment_app.command("eval")
def segment_eval(
    model: Annotated[Path, typer.Option(help="A model from `dgan segment train`.")],
    data: Annotated[Path, typer.Option(help="Real test pairs (images/ and masks/).")],
    size: int = 128,
    grid: Annotated[Path | None, typer.Option(help="Save an image | truth | prediction grid here.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Building IoU, F1, precision, recall and pixel accuracy on real test data."""
    import json

    from dgan.data.loaders import load_pairs_folder
    from dgan.data.shards import DataError
    from dgan.segment import load_model, metrics, predict, prediction_grid
    from dgan.training.generator import CheckpointError

    try:
        net, _ = load_model(model)
        test = load_pairs_folder(data, size)
    except (DataError, CheckpointError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    probs = predict(net, test.images)
    m = metrics(probs > 0.5, test.masks)
    table = Table("metric", "value", title=f"{model} on {data} ({len(test)} pairs)")
    for k, v in m.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    if grid:
        prediction_grid(test.images, test.masks, probs, grid)
    if json_out:
        json_out.write_text(json.dumps(m, indent=2))


@app.command()
def experiment(
    out: Annotated[Path, typer.Option(help="Output folder (results.json, results.md, predictions/).")] = Path(
        "runs/experiment"),
    data: Annotated[Path | None, typer.Option(help="Pairs folder with a manifest 'tile' column (default: "
                                                   "built-in scenes).")] = None,
    partition: Annotated[str, typer.Option(help="group (by tile) or iid; dirichlet/size also work.")] = "group",
    nodes: int = 4,
    size: Annotated[int, typer.Option(help="Resolution.")] = 128,
    gan_steps: Annotated[int, typer.Option(help="Generator updates for each GAN (batch 8 each).")] = 800,
    seg_steps: Annotated[int, typer.Option(help="Steps for every segmentation training.")] = 700,
    seeds: Annotated[int, typer.Option(help="Repeat each segmentation training with this many seeds.")] = 2,
    gan_seeds: Annotated[int, typer.Option(help="GAN trainings per GAN method (segmentation seed s uses GAN "
                                                "s mod this); 1 shares one GAN across the seeds.")] = 1,
    feedback: Annotated[list[FeedbackMode] | None, typer.Option(
        "--feedback", help="The GANs' feedback mode, for DGAN and the central GAN alike; repeat it to compare "
        "modes in one run (the first is `dgan`/`central_gan`, the others `dgan_MODE`/`central_gan_MODE`).")] = None,
    lambda_l1: LambdaL1 = 100.0,
    label_mix: Annotated[float, typer.Option(help="--feedback segmentation: OASIS LabelMix weight (0 = off).")] = 0.0,
    oasis_optim: Annotated[bool, typer.Option(help="OASIS optimisers: D lr 4e-4, G lr 1e-4, beta1 0.")] = False,
    gan_methods: Annotated[list[GanMethod] | None, typer.Option(
        "--gan-method", help="Train only these GAN methods (repeat; default: both). real_all and real_partial "
        "always run, from the cache when they can; a central GAN not asked for is still shown if cached.")] = None,
    seg_standardize: Annotated[bool, typer.Option(help="Segmenter standardises each image first.")] = False,
    seg_photometric: Annotated[float, typer.Option(help="Brightness/contrast/colour/blur jitter while training "
                                                        "the segmenter (0 = off).")] = 0.0,
    samples_per_mask: Annotated[int, typer.Option(help="Synthetic images per training mask.")] = 2,
    with_sync: Annotated[bool, typer.Option(help="Also run DGAN in sync mode.")] = False,
    quick: Annotated[bool, typer.Option(help="A smoke run of the whole pipeline in a few minutes.")] = False,
) -> None:
    """Compare real_all, real_partial, central_gan and dgan segmentation on the real test split."""
    from dgan.experiment import ExperimentConfig, run_experiment
    from dgan.report import write_report
    from dgan.segment import SegConfig

    setup_logging("INFO", "rich", "experiment")
    modes = tuple(dict.fromkeys(m.value for m in (feedback or [DEFAULT_MODE])))
    methods = tuple(m.value for m in (gan_methods or list(GanMethod)))
    if quick:
        cfg = ExperimentConfig(out=out, data=data, partition=partition, nodes=nodes, size=64, gan_steps=30,
                               g_width=16, d_width=16, seg=SegConfig(steps=60, eval_every=20), seeds=1,
                               samples_per_mask=1, scenes=96, quick=True, with_sync=with_sync, feedback=modes,
                               lambda_l1=lambda_l1, label_mix=label_mix, oasis_optim=oasis_optim, gan_methods=methods)
    else:
        seg = SegConfig(steps=seg_steps, standardize=seg_standardize, photometric=seg_photometric)
        cfg = ExperimentConfig(out=out, data=data, partition=partition, nodes=nodes, size=size, gan_steps=gan_steps,
                               seg=seg, seeds=seeds, gan_seeds=gan_seeds, lambda_l1=lambda_l1, feedback=modes,
                               label_mix=label_mix, oasis_optim=oasis_optim, gan_methods=methods,
                               samples_per_mask=samples_per_mask, with_sync=with_sync)
    results = run_experiment(cfg)
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
    sub = monitor(endpoint, duration, socket_setup=_curve(key, broker_key))
    console.print(f"{sub.updates} status updates received" + (" (run ended)" if sub.ended else ""))


@app.command()
def replay(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="A message log written by `dgan broker --record`.")],
    verify: Annotated[bool, typer.Option(help="Check every record's CRC; non-zero exit on damage.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="One line per message (filters below).")] = False,
    kind: Annotated[str | None, typer.Option(help="--list: only this kind (e.g. FEEDBACK).")] = None,
    node: Annotated[str | None, typer.Option(help="--list: only this peer.")] = None,
    since: Annotated[float | None, typer.Option(help="--list: from this many seconds after the start.")] = None,
    until: Annotated[float | None, typer.Option(help="--list: up to this many seconds after the start.")] = None,
    show: Annotated[int | None, typer.Option(help="Decode record N (tensors summarised).")] = None,
    save_images: Annotated[Path | None, typer.Option(help="Write carried masks and fakes as PNG here.")] = None,
    send: Annotated[str | None, typer.Option(help="Re-send node traffic to this broker node endpoint.")] = None,
    speed: Annotated[str, typer.Option(help="--send pacing: a factor (1.0 = as recorded) or 'max'.")] = "1.0",
    rebuild_generator: Annotated[bool, typer.Option(help="Re-apply recorded feedback to --from.")] = False,
    from_ckpt: Annotated[Path | None, typer.Option("--from", help="Initial generator checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where the rebuilt checkpoint goes.")] = None,
    audit: Annotated[bool, typer.Option(help="Privacy audit of every tensor; non-zero exit on a violation.")] = False,
    real_data: Annotated[Path | None, typer.Option(help="--audit: the nodes' real pairs (folder or shard .json): "
                                                        "look for near-copies and for gradients that carry them.")
                         ] = None,
) -> None:
    """Inspect, verify, re-send, rebuild from, or audit a message log (default: a summary)."""
    import json

    from dgan import replay as R
    from dgan.msglog import LogFormatError, ReadReport

    setup_logging("WARNING")
    if not log_file.exists():
        console.print(f"[red]no such log: {log_file}[/red]")
        raise typer.Exit(2)
    try:
        if verify:
            report = ReadReport()
            for _ in R.iter_records(log_file, report):
                pass
            console.print(f"{report.records} complete records, {report.bytes:,} bytes")
            if report.truncated_at is not None:
                console.print(f"[yellow]truncated last record at byte {report.truncated_at}: {report.error}[/yellow]")
            if report.corrupt_at is not None:
                console.print(f"[red]corrupt record at byte {report.corrupt_at}: {report.error}[/red]")
            raise typer.Exit(0 if report.truncated_at is None and report.corrupt_at is None else 1)
        if list_:
            table = Table("#", "t (s)", "direction", "peer", "kind", "id", "reply_to", "step", "bytes")
            for r in R.list_messages(log_file, kind, node, since, until):
                table.add_row(*(str(r[k]) if k != "t" else f"{r[k]:.3f}" for k in (
                    "index", "t", "direction", "peer", "kind", "id", "reply_to", "step", "bytes")))
            console.print(table)
            return
        if show is not None:
            rec, msg = R.show(log_file, show)
            console.print(f"record {show}: {rec.direction.name} {rec.peer}, {len(rec.frames)} frames")
            console.print_json(json.dumps(R.describe(msg) if msg else {"undecodable": True}))
            return
        if save_images is not None:
            n = R.save_images(log_file, save_images)
            console.print(f"wrote {n} images to {save_images}")
            return
        if send is not None:
            factor = None if speed == "max" else float(speed)
            counts = R.send(log_file, send, factor)
            console.print(f"sent {counts.get('sent', 0)} messages, {counts.get('replies', 0)} replies received")
            return
        if rebuild_generator:
            if from_ckpt is None or out is None:
                console.print("[red]--rebuild-generator needs --from CKPT and --out CKPT2[/red]")
                raise typer.Exit(2)
            step = R.rebuild_generator(log_file, from_ckpt, out)
            console.print(f"rebuilt the generator to step {step}: {out}")
            return
        if audit:
            real, real_masks = None, None
            if real_data is not None:
                from dgan.data.shards import DataError, resolve_real_data

                try:
                    real, real_masks = resolve_real_data(str(real_data), R.fake_size(log_file) or 128)
                except DataError as exc:
                    console.print(f"[red]{exc}[/red]")
                    raise typer.Exit(2) from None
            rep = R.audit(log_file, real, real_masks=real_masks)
            table = Table("direction kind tensor dtype rank", "count", title="tensors on the wire")
            for k, v in sorted(rep.tensors.items()):
                table.add_row(k, str(v))
            console.print(table)
            _print_audit_modes(rep)
            for v in rep.violations + rep.near_duplicates:
                console.print(f"[red]FAIL[/red] {v}")
            console.print("[green]audit passed[/green]" if rep.ok else
                          f"[red]audit failed: {len(rep.violations)} violation(s), "
                          f"{len(rep.near_duplicates)} near-duplicate(s) of real images[/red]")
            raise typer.Exit(0 if rep.ok else 1)
        s = R.summarize(log_file)
        table = Table("kind", "messages", "bytes", title=f"{log_file}: run {s.header.get('run_id') or '?'}, "
                      f"{s.span_s:.1f} s, {s.report.records} records")
        for k in sorted(s.by_kind):
            table.add_row(k, str(s.by_kind[k]), f"{s.bytes_by_kind[k]:,}")
        console.print(table)
        nodes = Table("peer", "messages", "bytes")
        for k in sorted(s.by_node):
            nodes.add_row(k, str(s.by_node[k]), f"{s.bytes_by_node[k]:,}")
        console.print(nodes)
        total = sum(s.bytes_by_kind.values())
        console.print(f"throughput {total / max(s.span_s, 1e-9) / 1e6:.2f} MB/s; undecodable {s.undecodable}; "
                      + (f"staleness mean {sum(s.staleness) / len(s.staleness):.2f}, max {max(s.staleness)}"
                         if s.staleness else "no feedback"))
        if s.report.truncated_at is not None or s.report.corrupt_at is not None:
            console.print(f"[yellow]log damaged after {s.report.records} records: {s.report.error}[/yellow]")
    except (LogFormatError, R.RebuildError, IndexError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _print_audit_modes(rep: Any) -> None:
    modes = Table("node", "feedback mode", "feedbacks with g_l1", "matched", "sign agreement (control)",
                  "|corr| (control)", title="feedback per node")
    for node in sorted(set(rep.modes) | set(rep.leakage)):
        lk = rep.leakage.get(node, {})
        modes.add_row(node, rep.modes.get(node, "?"), str(rep.pixel_losses.get(node, 0)), str(lk.get("matched", "-")),
                      f"{lk['sign_agreement']:.3f} ({lk['control_sign_agreement']:.3f})" if lk.get("matched") else "-",
                      f"{lk['abs_corr']:.3f} ({lk['control_abs_corr']:.3f})" if lk.get("matched") else "-")
    console.print(modes)
    if not rep.leakage:
        console.print("[dim]no gradient compared with a real image: pass the nodes' pairs with --real-data (their "
                      "masks identify which feedback belongs to which image)[/dim]")


@bench_app.command("transport")
def bench_transport(
    quick: Quick = False,
    json_out: JsonOut = None,
    record: Annotated[bool, typer.Option(help="Also measure the broker with --record on.")] = False,
) -> None:
    """Throughput and round-trip latency: dgan broker vs zmq.proxy vs direct."""
    from benchmarks.transport import run_transport_benchmark

    setup_logging("WARNING")
    run_transport_benchmark(quick=quick, json_out=json_out, with_record=record)


@bench_app.command("training")
def bench_training(quick: Quick = False, json_out: JsonOut = None) -> None:
    """DGAN (4 node processes) vs centralized pix2pix: samples/s, communication share, wire bytes."""
    from benchmarks.training import run_training_benchmark

    setup_logging("WARNING")
    run_training_benchmark(quick, json_out)


@bench_app.command("straggler")
def bench_straggler(quick: Quick = False, json_out: JsonOut = None) -> None:
    """4 nodes, one 4x slower: applied samples/s in async vs sync mode."""
    from benchmarks.training import run_straggler_benchmark

    setup_logging("WARNING")
    run_straggler_benchmark(quick, json_out)


@bench_app.command("precision")
def bench_precision(quick: Quick = False, json_out: JsonOut = None) -> None:
    """bf16 autocast vs fp32 for one pix2pix step on this CPU (decides whether training uses bf16)."""
    from benchmarks.precision import run_precision_benchmark

    setup_logging("WARNING")
    run_precision_benchmark(quick, json_out)


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
    """Kill and restart nodes at random while training; duplicate updates and crashes must be 0."""
    from benchmarks.chaos import run_chaos_benchmark

    setup_logging("WARNING")
    res = run_chaos_benchmark(minutes, json_out)
    if res["duplicate_updates"] or res["process_crashes"]:
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
) -> None:
    """Active (bisection) and passive reconstruction attacks against a real node, for every feedback mode."""
    from benchmarks.privacy import run_privacy_benchmark

    setup_logging("WARNING", "rich", "bench")
    run_privacy_benchmark(quick, json_out, data)


if __name__ == "__main__":
    app()

