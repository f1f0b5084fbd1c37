"""The ``dgan`` app, its sub-apps and the options its commands share."""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dgan import __version__
from dgan.cli_attack import attack_app
from dgan.cli_data import data_app
from dgan.feedback import FeedbackMode

app = typer.Typer(help="dgan: distributed asynchronous discriminator GAN for remote-sensing segmentation.",
                  no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(attack_app, name="attack")
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="CURVE keys for encrypted, authenticated runs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
log = logging.getLogger("dgan")

LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="rich, plain or json.")]
Feedback = Annotated[FeedbackMode, typer.Option(
    "--feedback", help="What a node's gradient is of: adversarial (private), semantic (adversarial plus a "
    "segmenter of the node's own pairs; private), segmentation (OASIS; private) or l1 (the paper's pix2pix L1; "
    "reveals the node's images, see docs/security.md).")]


class GanMethod(str, enum.Enum):
    central_gan = "central_gan"
    dgan = "dgan"


DataOption = Annotated[str, typer.Option("--data", help="The dataset: 'scenes', folder:PATH (images/, masks/), "
                                         "whu:PATH[:split], city-osm:PATH[:cities], airbus:PATH, a pairs folder "
                                         "or a shard .json.")]
LambdaL1 = Annotated[float, typer.Option("--lambda-l1", help="Weight of the L1 term (--feedback l1 only).")]
LambdaColour = Annotated[float, typer.Option(
    "--lambda-colour", help="Weight of a term on the fakes' per-class colour mean and spread against those of "
    "the node's whole dataset (any mode; 0 = off).")]
LambdaSemantic = Annotated[float, typer.Option(
    "--lambda-semantic", help="Weight of the node segmenter's cross-entropy on the fakes (--feedback semantic "
    "only).")]


def _version(value: bool) -> None:
    if value:
        console.print(f"dgan {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """dgan: learn one generator from images that stay at their nodes."""
    from dgan.malloc_tuning import tune_malloc

    tune_malloc()  # every command, before its tensors: see dgan.malloc_tuning


KeyFile = Annotated[Path | None, typer.Option("--key", help="CURVE: this process's .key_secret file.")]
BrokerKey = Annotated[Path | None, typer.Option("--broker-key", help="CURVE: the broker's public .key file.")]


def curve_socket_setup(key: Path | None, broker_key: Path | None) -> Any:
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


Quiet = Annotated[bool, typer.Option(help="No live panel and no summary table.")]
Quick = Annotated[bool, typer.Option(help="A short run (about a minute): small images, few steps.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the result here.")]
Heartbeat = Annotated[float, typer.Option(help="Heartbeat interval, seconds.")]
Threads = Annotated[int, typer.Option(help="torch threads in this process.")]


def _checked_device(device: str) -> str:
    from dgan.cpu_features import device_problem

    problem = device_problem(device)
    if problem is not None:
        raise typer.BadParameter(problem)
    return device


Device = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.", callback=_checked_device)]
ChannelsLast = Annotated[bool, typer.Option(
    help="The generator's G in NHWC memory layout. Measured by dgan bench speed: with bf16 on an Intel CPU with "
    "AMX, 2.36x fp32's samples/s against 1.72x for bf16 alone; alone 1.18x there and 0.93-1.01x on an AMD "
    "VM (docs/results/speed.md).")]


def set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


segment_app = typer.Typer(help="Segmentation: train a U-Net on pairs, evaluate on real data.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
