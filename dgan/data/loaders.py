"""Loaders for real remote-sensing sets, all returning a :class:`PairSet` at the run's resolution.

Images are resized bilinearly, masks by nearest neighbour.  Every error names
the file that caused it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dgan.data.shards import IMAGE_EXTS, DataError

CITY_OSM_COLOURS = {"building": (255, 0, 0), "road": (0, 0, 255), "background": (255, 255, 255)}


@dataclass
class PairSet:
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8 class ids
    names: list[str]
    columns: dict[str, list[str]] = field(default_factory=dict)  # manifest columns, one value per pair
    classes: tuple[str, ...] = ("background", "building")  # mask value i is class classes[i]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: list[int] | np.ndarray) -> PairSet:
        idx = list(idx)
        return PairSet(self.images[idx], self.masks[idx], [self.names[i] for i in idx],
                       {k: [v[i] for i in idx] for k, v in self.columns.items()}, self.classes)


def concat(sets: list[PairSet]) -> PairSet:
    """One set from several with the same classes; columns that not every set has are dropped."""
    if not sets or any(s.classes != sets[0].classes for s in sets):
        raise DataError("cannot join sets with different classes (or none)")
    keys = set.intersection(*(set(s.columns) for s in sets))
    return PairSet(np.concatenate([s.images for s in sets]), np.concatenate([s.masks for s in sets]),
                   [n for s in sets for n in s.names], {k: [v for s in sets for v in s.columns[k]] for k in keys},
                   sets[0].classes)


def _open(path: Path, mode: str, size: int | None, resample: Image.Resampling) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), resample)
            return np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def read_image(path: Path, size: int | None) -> np.ndarray:
    return _open(path, "RGB", size, Image.Resampling.BILINEAR)


def read_binary_mask(path: Path, size: int | None) -> np.ndarray:
    return (_open(path, "L", size, Image.Resampling.NEAREST) > 0).astype(np.uint8)


def read_class_mask(path: Path, size: int | None, num_classes: int) -> np.ndarray:
    """A mask of class ids 0..num_classes-1 (a pairs folder with ``classes.json``)."""
    mask = _open(path, "L", size, Image.Resampling.NEAREST)
    if mask.size and int(mask.max()) >= num_classes:
        raise DataError(f"{path}: value {int(mask.max())} is not a class id (classes.json names {num_classes})")
    return mask


def read_classes(root: Path) -> tuple[str, ...] | None:
    """``classes.json`` (``{"classes": ["background", "building", "road"]}``) or None for binary masks."""
    path = root / "classes.json"
    if not path.exists():
        return None
    try:
        names = json.loads(path.read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {path}: {exc!r}; expected {{\"classes\": [\"background\", ...]}}") from None
    if not isinstance(names, list) or not 2 <= len(names) <= 255 or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'classes' must list 2 to 255 class names, background first")
    return tuple(names)


def load_pairs_folder(root: Path, size: int, names: list[str] | None = None) -> PairSet:
    """``images/<stem>.*`` + ``masks/<stem>.*``; with ``manifest.csv`` (a ``name`` column) its order and columns.

    Masks are binary (any non-zero value is the foreground) unless ``classes.json`` names more than two
    classes: then each mask value is a class id.
    """
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"{root} needs images/ and masks/ folders")
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    columns: dict[str, list[str]] = {}
    manifest = root / "manifest.csv"
    if manifest.exists():
        try:
            with open(manifest, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error) as exc:
            raise DataError(f"cannot read {manifest}: {exc}") from None
        if not rows or "name" not in rows[0]:
            raise DataError(f"{manifest} needs a 'name' column")
        order = [r["name"] for r in rows]
        by_name = {r["name"]: r for r in rows}
    else:
        order, by_name = sorted(images), {}
    stems = list(names) if names is not None else order
    missing = [s for s in stems if s not in images or s not in masks]
    if missing:
        what = "image" if missing[0] not in images else "mask"
        raise DataError(f"{root}: no {what} file for {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                          if len(missing) > 1 else ""))
    if not stems:
        raise DataError(f"{root}: no image/mask pairs")
    if by_name:
        columns = {k: [by_name[s][k] for s in stems] for k in rows[0] if k != "name"}
    classes = read_classes(root)
    ims = np.stack([read_image(images[s], size) for s in stems])
    if classes is None or len(classes) == 2:  # binary: any non-zero value is the foreground (0/255 files)
        ms = np.stack([read_binary_mask(masks[s], size) for s in stems])
        return PairSet(ims, ms, stems, columns, *([classes] if classes else []))
    ms = np.stack([read_class_mask(masks[s], size, len(classes)) for s in stems])
    return PairSet(ims, ms, stems, columns, classes)


def load_whu(root: Path, split: str, size: int) -> PairSet:
    """WHU building (aerial): ``{split}/image/*.tif`` + ``{split}/label/*.tif`` (labels 0/255)."""
    img_dir, lab_dir = root / split / "image", root / split / "label"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DataError(f"{root}: WHU split {split!r} needs {split}/image and {split}/label folders")
    stems = sorted(p.stem for p in img_dir.glob("*.tif"))
    if not stems:
        raise DataError(f"{img_dir}: no .tif images")
    for s in stems:
        if not (lab_dir / f"{s}.tif").exists():
            raise DataError(f"{img_dir / (s + '.tif')}: no label {lab_dir / (s + '.tif')}")
    ims = np.stack([read_image(img_dir / f"{s}.tif", size) for s in stems])
    ms = np.stack([read_binary_mask(lab_dir / f"{s}.tif", size) for s in stems])
    return PairSet(ims, ms, [f"{split}_{s}" for s in stems], {"split": [split] * len(stems)})


def load_city_osm(root: Path, size: int, classes: tuple[str, ...] = ("building",),
                  cities: tuple[str, ...] = ()) -> PairSet:
    """City-OSM (Kaiser et al. 2017): ``<city>/<city><n>_image.png`` + ``<city><n>_labels.png`` (RGB labels).

    Files may also sit directly in ``root``.  Class ids are 1..C in the order named, 0 = background and
    every stray colour.  ``cities`` keeps only those cities (all by default).
    """
    unknown = [c for c in classes if c not in CITY_OSM_COLOURS or c == "background"]
    if unknown:
        raise DataError(f"unknown City-OSM class {unknown[0]!r}; choose from building, road")
    images = sorted([*root.glob("*_image.png"), *root.glob("*/*_image.png")])
    if not images:
        raise DataError(f"{root}: no <city>/<city><n>_image.png files")
    city_of = {img: img.name[: -len("_image.png")].rstrip("0123456789") for img in images}
    if cities:
        missing = [c for c in cities if c not in set(city_of.values())]
        if missing:
            found = ", ".join(sorted(set(city_of.values())))
            raise DataError(f"{root}: no City-OSM city {missing[0]!r} (found {found})")
        images = [img for img in images if city_of[img] in cities]
    ims, ms, names = [], [], []
    for img in images:
        stem = img.name[: -len("_image.png")]
        lab = img.with_name(f"{stem}_labels.png")
        if not lab.exists():
            raise DataError(f"{img}: no label file {lab}")
        rgb = _open(lab, "RGB", size, Image.Resampling.NEAREST)
        mask = np.zeros(rgb.shape[:2], np.uint8)
        for cid, name in enumerate(classes, start=1):
            mask[np.all(rgb == CITY_OSM_COLOURS[name], axis=-1)] = cid
        ims.append(read_image(img, size))
        ms.append(mask)
        names.append(stem)
    return PairSet(np.stack(ims), np.stack(ms), names, {"city": [city_of[i] for i in images]},
                   ("background", *classes))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Airbus ship RLE: 1-indexed (start, length) pairs over the column-major flattened image."""
    h, w = shape
    flat = np.zeros(h * w, np.uint8)
    if not rle or not rle.strip():
        return flat.reshape(w, h).T
    try:
        nums = np.asarray(rle.split(), dtype=np.int64)
    except ValueError:
        raise DataError(f"RLE {rle[:40]!r} is not whitespace-separated integers") from None
    if len(nums) % 2:
        raise DataError(f"RLE {rle[:40]!r} has an odd number of values")
    for start, length in zip(nums[0::2], nums[1::2], strict=True):
        if start < 1 or length < 0 or start - 1 + length > h * w:
            raise DataError(f"RLE run ({start}, {length}) falls outside a {h}x{w} image")
        flat[start - 1: start - 1 + length] = 1
    return flat.reshape(w, h).T  # column-major: pixel k is (k % h, k // h)


def load_airbus(root: Path, size: int, limit: int | None = None) -> PairSet:
    """Kaggle Airbus Ship: ``train_v2/*.jpg`` + ``train_ship_segmentations_v2.csv`` (rows per ship are OR-ed)."""
    csv_path = root / "train_ship_segmentations_v2.csv"
    if not csv_path.exists():
        raise DataError(f"{root}: no train_ship_segmentations_v2.csv")
    runs: dict[str, list[str]] = {}
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                runs.setdefault(row["ImageId"], []).append(row.get("EncodedPixels") or "")
    except (OSError, csv.Error, KeyError) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from None
    ids = sorted(runs)[:limit] if limit else sorted(runs)
    ims, ms = [], []
    for image_id in ids:
        path = root / "train_v2" / image_id
        if not path.exists():
            raise DataError(f"{csv_path} lists {image_id} but {path} does not exist")
        full = read_image(path, None)
        mask = np.zeros(full.shape[:2], np.uint8)
        for rle in runs[image_id]:
            try:
                mask |= rle_decode(rle, full.shape[:2])
            except DataError as exc:
                raise DataError(f"{csv_path}, {image_id}: {exc}") from None
        ims.append(np.asarray(Image.fromarray(full).resize((size, size), Image.Resampling.BILINEAR)))
        ms.append(np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)))
    return PairSet(np.stack(ims), np.stack(ms), [Path(i).stem for i in ids], {"image_id": list(ids)},
                   ("background", "ship"))
