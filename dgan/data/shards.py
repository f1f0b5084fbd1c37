"""What data a node holds: a shard spec (JSON) resolved to image and mask arrays.

``dgan run`` writes one shard file per node; a node started by hand may also
point ``--data`` at a folder of image/mask pairs or say ``scenes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dgan.data.scenes import make_scenes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(Exception):
    """Data that cannot be loaded; the message names the file."""


def scenes_spec(seeds: list[int], size: int, variant: str = "buildings") -> dict[str, Any]:
    return {"kind": "scenes", "seeds": [int(s) for s in seeds], "size": size, "variant": variant}


def load_spec(spec: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    kind = spec.get("kind")
    if kind == "scenes":
        return make_scenes(spec["seeds"], int(spec.get("size", size)), spec.get("variant", "buildings"))
    if kind == "folder":
        return load_folder(Path(spec["path"]), size, spec.get("names"))
    raise DataError(f"unknown data kind {kind!r} in shard spec")


def resolve_data(data: str, size: int, count: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``--data``: a shard JSON file, a folder of pairs, or the word ``scenes``."""
    if data == "scenes":
        return make_scenes(range(seed * 1_000_000, seed * 1_000_000 + count), size)
    path = Path(data)
    if path.suffix == ".json":
        try:
            spec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read shard spec {path}: {exc}") from None
        return load_spec(spec, size)
    if path.is_dir():
        return load_folder(path, size)
    raise DataError(f"--data {data!r}: not 'scenes', a shard .json, or a folder")


def _read(path: Path, mode: str, size: int, resample: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), resample)
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_folder(root: Path, size: int, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``images/<stem>.*`` + ``masks/<stem>.*``; masks > 0 are foreground."""
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"{root} needs images/ and masks/ folders")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    stems = names if names is not None else sorted(images)
    missing = [s for s in stems if s not in masks or s not in images]
    if missing:
        raise DataError(f"{root}: no image/mask pair for {', '.join(missing[:5])}")
    if not stems:
        raise DataError(f"{root}: no images found")
    ims = np.stack([_read(images[s], "RGB", size, Image.BILINEAR) for s in stems])
    ms = np.stack([(_read(masks[s], "L", size, Image.NEAREST) > 0).astype(np.uint8) for s in stems])
    return ims, ms
