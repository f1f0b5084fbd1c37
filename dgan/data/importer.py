"""``dgan data import``: any dataset kind -> a pairs folder that every command reads the same way.

The folder holds ``images/``, ``masks/``, ``manifest.csv`` (``name`` plus the dataset's natural group
column: WHU ``split``, City-OSM ``city``, Airbus ``image_id``) and ``classes.json``, which names the
classes (binary masks are written 0/255, more classes as class ids).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dgan.data.loaders import PairSet
from dgan.data.shards import DataError
from dgan.data.spec import DataSpec, binary, load_data, parse_data_spec

log = logging.getLogger(__name__)


def write_pairs_folder(pairs: PairSet, out: Path) -> Path:
    """Write ``pairs`` as a pairs folder at ``out``, which must be empty or new (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose a new OUT")
    if len(set(pairs.names)) != len(pairs.names):
        raise DataError("the dataset names two pairs the same; cannot write them as files")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    binary = len(pairs.classes) <= 2
    for name, image, mask in zip(pairs.names, pairs.images, pairs.masks, strict=True):
        Image.fromarray(image).save(out / "images" / f"{name}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255 if binary else mask).save(out / "masks" / f"{name}.png")
    columns = sorted(pairs.columns)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *columns])
        for i, name in enumerate(pairs.names):
            w.writerow([name, *(pairs.columns[c][i] for c in columns)])
    (out / "classes.json").write_text(json.dumps({"classes": list(pairs.classes)}, indent=1) + "\n")
    return out


def import_dataset(spec: DataSpec, out: Path, size: int) -> PairSet:
    if spec.kind in ("scenes", "folder"):
        raise DataError(f"nothing to import from {spec.kind}: it is already what commands read")
    pairs = load_data(spec, size)
    write_pairs_folder(pairs, out)
    return pairs


def as_pairs_folder(data: str | None, workdir: Path, size: int, foreground: str | None = None,
                    keep_classes: bool = False) -> Path | None:
    """For the commands that hand folders to node processes (``run``, ``experiment``): None for scenes, a
    pairs folder as it is, and any other kind imported once under ``workdir/data/``.

    ``keep_classes`` (``run``, the experiment) keeps every class; without it a multi-class set is imported as
    ``foreground`` (default: its first class) against the rest.
    """
    if data is None or data.strip() == "scenes" or data.strip().startswith("scenes:"):
        return None
    spec = parse_data_spec(data)
    if spec.kind == "folder":
        if spec.path is None or not (spec.path / "images").is_dir():
            raise DataError(f"--data {data!r}: these commands need a pairs folder (images/, masks/) or a dataset "
                            "kind, not a shard file")
        return spec.path
    key = hashlib.sha1(f"{spec}|{size}|{foreground}|{keep_classes}".encode()).hexdigest()[:10]
    out = workdir / "data" / f"{spec.kind}-{key}"
    if (out / "manifest.csv").exists():
        log.info("%s: using the import in %s", spec, out)
        return out
    pairs = load_data(spec, size)
    picked = pairs if keep_classes else binary(pairs, foreground)
    if len(pairs.classes) > 2 and not keep_classes:
        log.warning("%s has classes %s; this command is binary: %s against the rest", spec,
                    ", ".join(pairs.classes), picked.classes[1])
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_pairs_folder(picked, tmp)
    tmp.rename(out)
    log.info("%s: %d pairs imported to %s", spec, len(picked), out)
    return out
