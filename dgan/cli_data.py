"""``dgan data``: import the paper's datasets into pairs folders, and show what a dataset holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dgan.data.spec import SPEC_HELP

data_app = typer.Typer(help="Datasets: import WHU, City-OSM or Airbus into a pairs folder; show any dataset.",
                       no_args_is_help=True)
console = Console()


@data_app.command("import")
def import_cmd(
    kind: Annotated[str, typer.Argument(help="whu, city-osm or airbus.")],
    src: Annotated[Path, typer.Argument(help="The dataset's folder, as downloaded.")],
    out: Annotated[Path, typer.Argument(help="A new folder for the pairs (images/, masks/, manifest.csv).")],
    size: Annotated[int, typer.Option(help="Side of the written pairs, in pixels.")] = 256,
    split: Annotated[str, typer.Option(help="WHU: one split (train, val, test); default all three, with a "
                                            "'split' column to hold the test split out by.")] = "all",
    cities: Annotated[str, typer.Option(help="City-OSM: a comma list of cities; default all.")] = "",
) -> None:
    """Write a pairs folder with a manifest that carries the dataset's group column (split, city, image id)."""
    from dgan.data.importer import import_dataset
    from dgan.data.shards import DataError
    from dgan.data.spec import GROUP_COLUMN, parse_data_spec

    try:
        if kind not in ("whu", "city-osm", "airbus"):
            raise DataError(f"unknown dataset kind {kind!r}: choose whu, city-osm or airbus")
        if (split != "all" and kind != "whu") or (cities and kind != "city-osm"):
            raise DataError(f"--split is for whu and --cities for city-osm; {kind} takes neither")
        option = split if kind == "whu" else cities if kind == "city-osm" else ""
        spec = parse_data_spec(f"{kind}:{src}" + (f":{option}" if option else ""))
        pairs = import_dataset(spec, out, size)
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"wrote {len(pairs)} pairs of {size}x{size} with classes {', '.join(pairs.classes)} to {out}; "
                  f"group column [bold]{GROUP_COLUMN[kind]}[/bold] (use --data {out} --test "
                  f"{GROUP_COLUMN[kind]}=VALUE)")


@data_app.command("show")
def show(
    data: Annotated[str, typer.Argument(help=SPEC_HELP)],
    size: Annotated[int, typer.Option(help="Load at this side, in pixels.")] = 128,
    count: Annotated[int, typer.Option(help="With scenes: how many.")] = 64,
    grid: Annotated[Path | None, typer.Option(help="Write a sample grid here (image over mask, class palette).")
                    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Counts, class frequencies, groups and a sample grid of a dataset named as `--data` names it."""
    from dgan.data.shards import DataError
    from dgan.data.spec import load_data, parse_data_spec
    from dgan.data.view import summarize, write_grid

    try:
        spec = parse_data_spec(data)
        pairs = load_data(spec, size, count=count)
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    info = summarize(pairs, spec.group_column)
    table = Table(title=f"{spec}: {info['pairs']} pairs at {size}x{size}, "
                        f"{info['images_without_foreground']} without foreground")
    for col in ("id", "class", "pixel share", "images with it"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in info["classes"]:
        table.add_row(str(c["id"]), c["name"], f"{c['pixel_share']:.4f}", str(c["images_with"]))
    console.print(table)
    if info["group_column"]:
        groups = ", ".join(f"{k}: {v}" for k, v in sorted(info["groups"].items())[:24])
        more = len(info["groups"]) - 24
        console.print(f"groups by [bold]{info['group_column']}[/bold]: {groups}" + (f" (+{more} more)" if more > 0
                                                                                    else ""))
    if grid is not None:
        console.print(f"grid: {write_grid(pairs, grid)}")
    if json_out is not None:
        json_out.write_text(json.dumps(info, indent=1) + "\n")
