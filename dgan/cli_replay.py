"""`dgan replay`: inspect, audit, rebuild and re-send a recorded message log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from dgan.cli_app import (
    app,
    console,
)
from dgan.cli_checks import require_log
from dgan.logs import setup_logging

log = logging.getLogger("dgan")


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
    require_log(log_file, console)
    try:
        if verify:
            report = ReadReport()
            for _ in R.iter_log(log_file, report):
                pass
            from dgan.msglog import segments

            console.print(f"{report.records} complete records, {report.bytes:,} bytes, "
                          f"{len(segments(log_file))} segment(s)")
            for gap in report.gaps:
                console.print(f"[yellow]an older segment ends in a partial record (a crash): {gap}[/yellow]")
            if report.truncated_at is not None:
                console.print(f"[yellow]truncated last record at byte {report.truncated_at}: {report.error}[/yellow]")
            if report.corrupt_at is not None:
                console.print(f"[red]corrupt record at byte {report.corrupt_at}: {report.error}[/red]")
            raise typer.Exit(0 if report.truncated_at is None and report.corrupt_at is None else 1)
        if list_:
            # kind and peer are what people filter by: they keep their width; the long ids give way first
            table = Table("#", "t (s)", "direction", Column("peer", min_width=6, overflow="fold"),
                          Column("kind", min_width=11, no_wrap=True), "id", "reply_to", "step", "bytes")
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
