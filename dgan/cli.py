"""The ``dgan`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dgan import __version__
from dgan.logs import setup_logging

app = typer.Typer(help="dgan: distributed asynchronous discriminator GAN for remote-sensing segmentation.",
                  no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()
log = logging.getLogger("dgan")

LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="rich, plain or json.")]


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
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "rich",
) -> None:
    """Run the ZeroMQ broker between the generator and the nodes."""
    from broker import Broker, BrokerConfig
    from dgan.protocol import Limits

    setup_logging(log_level, log_format, "broker")
    cfg = BrokerConfig(host=host, node_port=node_port, generator_port=generator_port, pub_port=pub_port,
                       heartbeat_interval=heartbeat, liveness=liveness, hwm=hwm,
                       limits=Limits(max_message_bytes=int(max_message_mb * 1024 * 1024)), record=record)
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
    console.print(table)
    b.install_signal_handlers()
    b.serve()


@bench_app.command("transport")
def bench_transport(
    quick: Annotated[bool, typer.Option(help="A short run (about a minute).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the rows here.")] = None,
    record: Annotated[bool, typer.Option(help="Also measure the broker with --record on.")] = False,
) -> None:
    """Throughput and round-trip latency: dgan broker vs zmq.proxy vs direct."""
    from benchmarks.transport import run_transport_benchmark

    setup_logging("WARNING")
    run_transport_benchmark(quick=quick, json_out=json_out, with_record=record)


if __name__ == "__main__":
    app()
