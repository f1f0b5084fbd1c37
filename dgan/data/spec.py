"""One way to name a dataset on any command line: ``--data KIND:PATH[:OPTION]``.

Kinds (the paper's datasets, plus pairs folders and the built-in scenes):

* ``scenes[:VARIANT]``: the procedural scenes (no files): ``buildings`` (default), ``buildings-roads``
  (3 classes) or ``ships``;
* ``folder:PATH``: ``images/`` + ``masks/`` (+ ``manifest.csv``, + ``classes.json``);
* ``whu:PATH[:SPLIT]``: WHU building, ``{train,val,test}/{image,label}/N.tif``; ``train`` and ``val`` by
  default (the published test split only when asked for: ``:test``, or ``:all`` for the three);
* ``city-osm:PATH[:CITIES]``: City-OSM, ``<city>/<city><n>_image.png`` + ``_labels.png``; ``CITIES``
  is a comma list (all by default);
* ``airbus:PATH[:N]``: Kaggle Airbus Ship, ``train_v2/*.jpg`` + ``train_ship_segmentations_v2.csv``; the
  first N images by id (all by default: the full set is about 192k images, so choose N or import once).

A bare path still works: a shard ``.json`` (what ``dgan run`` writes per node) or a pairs folder.
Every loaded set carries its natural group column (``split``, ``city``, ``image_id``) so the
experiment's group partition and ``--test COLUMN=V`` work on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dgan.data.shards import DataError

if TYPE_CHECKING:  # typing only: loading PIL is not every command line's business
    from dgan.data.loaders import PairSet

KINDS = ("scenes", "folder", "whu", "city-osm", "airbus")
GROUP_COLUMN = {"whu": "split", "city-osm": "city", "airbus": "image_id", "scenes": "group"}
WHU_SPLITS = ("train", "val", "test")
WHU_DEFAULT = ("train", "val")  # never the published test split unless asked for
SPEC_HELP = ("'scenes[:buildings-roads|ships]', folder:PATH, whu:PATH[:train|val|test|all], "
             "city-osm:PATH[:city,city], airbus:PATH[:N], a pairs folder or a shard .json")


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    option: str = ""  # WHU split, City-OSM cities

    def __str__(self) -> str:
        if self.kind == "scenes":
            return "scenes" + (f":{self.option}" if self.option else "")
        return f"{self.kind}:{self.path}" + (f":{self.option}" if self.option else "")

    @property
    def group_column(self) -> str | None:
        return GROUP_COLUMN.get(self.kind)


def parse_data_spec(text: str) -> DataSpec:
    """``--data`` text -> a :class:`DataSpec`; a one-line :class:`DataError` that says what was expected."""
    text = text.strip()
    if text == "scenes":
        return DataSpec("scenes")
    if text.startswith("scenes:"):
        from dgan.data.scenes import VARIANTS

        variant = text.partition(":")[2]
        if variant not in VARIANTS:
            raise DataError(f"--data {text!r}: scene variants are {', '.join(VARIANTS)}")
        return DataSpec("scenes", None, "" if variant == "buildings" else variant)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:  # a bare path (shard .json or pairs folder)
        if not text:
            raise DataError(f"--data is empty; expected {SPEC_HELP}")
        if sep and re.fullmatch(r"[a-z][a-z0-9-]*", kind) and not Path(text).exists():
            raise DataError(f"--data {text!r}: unknown kind {kind!r}; expected {SPEC_HELP}")
        return DataSpec("folder", Path(text).expanduser())
    if not rest:
        raise DataError(f"--data {text!r}: {kind} needs a path ({SPEC_HELP})")
    path, option = rest, ""
    head, sep, tail = rest.rpartition(":")
    if sep and head and "/" not in tail:
        path, option = head, tail
    if kind == "whu" and option and option not in (*WHU_SPLITS, "all"):
        raise DataError(f"--data {text!r}: the WHU split must be one of {', '.join(WHU_SPLITS)} or all, got "
                        f"{option!r}")
    if kind == "airbus" and option and not (option.isdigit() and int(option) > 0):
        raise DataError(f"--data {text!r}: airbus:PATH:N takes a positive number of images, got {option!r}")
    if kind == "folder" and option:
        path, option = rest, ""  # a folder path may hold ':'
    return DataSpec(kind, Path(path).expanduser(), option)


def load_data(spec: DataSpec | str, size: int, count: int = 200, seed: int = 0) -> PairSet:
    """The pairs a spec names, at ``size`` x ``size``; masks hold class ids (``pairs.classes`` names them)."""
    from dgan.data import loaders as L
    from dgan.data.scenes import CLASSES, make_scenes

    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "scenes":
        variant = spec.option or "buildings"
        ims, ms = make_scenes(range(seed * 1_000_000, seed * 1_000_000 + count), size, variant)
        return L.PairSet(ims, ms, [f"s{i}" for i in range(count)], {"group": [str(i % 8) for i in range(count)]},
                         CLASSES[variant])
    path = spec.path
    if path is None or not path.exists():
        raise DataError(f"--data {spec}: {path} does not exist (expected {SPEC_HELP})")
    if spec.kind == "folder":
        if path.suffix == ".json":
            from dgan.data.shards import read_shard

            ims, ms = read_shard(path, size)
            return L.PairSet(ims, ms, [f"{path.stem}-{i}" for i in range(len(ims))])
        if not path.is_dir():
            raise DataError(f"{path} is neither a pairs folder (images/, masks/) nor a shard .json")
        return L.load_pairs_folder(path, size)
    if spec.kind == "whu":
        wanted = WHU_SPLITS if spec.option == "all" else (spec.option,) if spec.option else WHU_DEFAULT
        splits = tuple(s for s in wanted if (path / s).is_dir())
        if not splits:
            raise DataError(f"{path}: no WHU split folder ({', '.join(WHU_SPLITS)}/image and /label)")
        return L.concat([L.load_whu(path, s, size) for s in splits])
    if spec.kind == "city-osm":
        cities = tuple(c.strip() for c in spec.option.split(",") if c.strip())
        return L.load_city_osm(path, size, classes=("building", "road"), cities=cities)
    return L.load_airbus(path, size, limit=int(spec.option) if spec.option else None)


def binary(pairs: PairSet, foreground: str | None = None) -> PairSet:
    """A two-class view for the binary tools: ``foreground`` (default: the first class after background) is 1."""
    from dgan.data.loaders import PairSet

    if len(pairs.classes) <= 2:
        return pairs
    name = foreground or pairs.classes[1]
    if name not in pairs.classes[1:]:
        raise DataError(f"class {name!r} is not one of {', '.join(pairs.classes[1:])}")
    cid = pairs.classes.index(name)
    return PairSet(pairs.images, (pairs.masks == cid).astype("uint8"), pairs.names, pairs.columns,
                   ("background", name))
