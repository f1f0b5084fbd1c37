"""One way to name a dataset on any command line: ``--data KIND:PATH[:OPTION]``.

Kinds (the paper's datasets, plus pairs folders and the built-in scenes):

* ``scenes[:VARIANT]``: the procedural scenes (no files): ``buildings`` (default), ``buildings-roads``
  (3 classes) or ``ships``;
* ``folder:PATH``: ``images/`` + ``masks/`` (+ ``manifest.csv``, + ``classes.json``);
* ``whu:PATH[:SPLIT]``: WHU building, ``{train,val,test}/{image,label}/N.tif``; all splits by default;
* ``city-osm:PATH[:CITIES]``: City-OSM, ``<city>/<city><n>_image.png`` + ``_labels.png``; ``CITIES``
  is a comma list (all by default);
* ``airbus:PATH``: Kaggle Airbus Ship, ``train_v2/*.jpg`` + ``train_ship_segmentations_v2.csv``.

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
SPEC_HELP = ("'scenes[:buildings-roads|ships]', folder:PATH, whu:PATH[:train|val|test], city-osm:PATH[:city,city], "
             "airbus:PATH, a pairs folder or a shard .json")


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
    if kind in ("whu", "city-osm"):
        head, sep, tail = rest.rpartition(":")
        if sep and head and "/" not in tail:
            path, option = head, tail
    if kind == "whu" and option and option not in WHU_SPLITS:
        raise DataError(f"--data {text!r}: the WHU split must be one of {', '.join(WHU_SPLITS)}, got {option!r}")
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
        splits = (spec.option,) if spec.option else tuple(s for s in WHU_SPLITS if (path / s).is_dir())
        if not splits:
            raise DataError(f"{path}: no WHU split folder ({', '.join(WHU_SPLITS)}/image and /label)")
        return L.concat([L.load_whu(path, s, size) for s in splits])
    if spec.kind == "city-osm":
        cities = tuple(c.strip() for c in spec.option.split(",") if c.strip())
        return L.load_city_osm(path, size, classes=("building", "road"), cities=cities)
    return L.load_airbus(path, size)


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
