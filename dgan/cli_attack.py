"""``dgan attack``: run the curious generator's attacks on recorded traffic, so privacy claims carry numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from dgan.cli_checks import require_log
from dgan.logs import setup_logging

attack_app = typer.Typer(help="Attacks a curious generator can run on what it receives: measured privacy.",
                         no_args_is_help=True)
console = Console()


@attack_app.command("reconstruct")
def reconstruct(
    log_file: Annotated[Path, typer.Argument(help="A broker message log (dgan broker --record).")],
    real_data: Annotated[str, typer.Option(help="The nodes' real pairs, to score against: a pairs folder, a shard "
                                                ".json, or a run's shards/ folder. The attack itself never reads "
                                                "them.")],
    min_feedbacks: Annotated[int, typer.Option(help="Score images the log holds at least this many feedbacks "
                                                    "for.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write a grid: real | mean fake | the two attacks' estimates | "
                                                  "mean colour.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores here.")] = None,
    tolerate: Annotated[int, typer.Option(min=0, max=8, help="Robust attack: wrong signs per pixel and side it may "
                                                              "drop (memory: 2 x (N + 1) + 1 image planes per "
                                                              "image; 0 = the exact intervals alone).")] = 3,
    # 3 is dgan.attacks.TOLERATE, written out so that `dgan --help` does not import the attacks (a test pins it)
) -> None:
    """The passive curious generator: rebuild each node image from the feedback in a log, matched by mask."""
    from dgan import replay as R
    from dgan.attacks import mean_colour, score_log, to_uint8
    from dgan.data.shards import DataError, resolve_real_data
    from dgan.msglog import LogFormatError

    setup_logging("WARNING")
    require_log(log_file, console)
    try:
        size = R.fake_size(log_file)
        if size is None:
            console.print(f"[red]{log_file} holds no FAKES: nothing to attack[/red]")
            raise typer.Exit(2)
        images, masks = resolve_real_data(real_data, size)
        scores, matched = score_log(log_file, images, masks, min_feedbacks, tolerate)
    except (DataError, LogFormatError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    both, s = scores, scores.intervals
    table = Table("estimate", "PSNR dB", "SSIM", title=f"passive reconstruction from {log_file.name}: {s.images} "
                  f"node images matched by mask, {s.feedbacks:.1f} feedbacks each on average")
    table.add_row("attack: fakes projected into the sign intervals", f"{s.psnr_db:.2f}", f"{s.ssim:.3f}")
    table.add_row(f"attack: the same, the fewest bounds dropped (up to {tolerate} per side) to make it hold",
                  f"{both.robust.psnr_db:.2f}", f"{both.robust.ssim:.3f}")
    table.add_row("baseline: the fakes themselves (their mean)", f"{s.fakes_psnr_db:.2f}", f"{s.fakes_ssim:.3f}")
    table.add_row("baseline: each image's mean colour", f"{s.mean_colour_psnr_db:.2f}", "")
    console.print(table)
    if s.images:
        gain = both.best_gain_db
        verdict = ("[red]the feedback reveals the images[/red]" if gain > 0.5 else
                   "[yellow]slightly better than the fakes[/yellow]" if gain > 0 else "[green]no better than the fakes")
        console.print(f"best attack - fakes: {gain:+.2f} dB ({verdict}); sign intervals consistent on "
                      f"{s.consistency:.1%} of pixels, with up to {tolerate} dropped on {both.robust_consistency:.1%}")
    else:
        console.print("[yellow]no recorded feedback matched a real image by its mask[/yellow]")
    if out is not None and matched:
        from PIL import Image

        best = sorted(matched, key=lambda m: -m[0].estimate.queries)[:8]
        rows = [np.concatenate([real, to_uint8(r.estimate.mean_fake()), to_uint8(r.estimate.passive()),
                                to_uint8(r.estimate.robust()), mean_colour(real)], axis=1) for r, real in best]
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(out)
        console.print(f"grid (real | mean fake | intervals | robust intervals | mean colour): {out}")
    if json_out is not None:
        json_out.write_text(json.dumps({"log": str(log_file), **vars(s), "robust_psnr_db": both.robust.psnr_db,
                                        "robust_ssim": both.robust.ssim, "robust_consistency": both.robust_consistency,
                                        "tolerate": tolerate, "best_gain_db": both.best_gain_db},
                                       indent=2))
