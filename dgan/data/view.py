"""What a dataset holds, for a person: counts, class frequencies, groups, and a grid in a class palette."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dgan.data.loaders import PairSet

# Background black; then classes in colours that stay apart on aerial images.
PALETTE = np.array([(0, 0, 0), (230, 40, 40), (40, 90, 240), (250, 210, 30), (40, 200, 90), (200, 60, 220),
                    (30, 210, 220), (250, 140, 20)], np.uint8)


def colour_masks(masks: np.ndarray) -> np.ndarray:
    """Class ids (N, H, W) -> RGB in the class palette (ids past the palette wrap around, never black)."""
    ids = masks.astype(np.int64)
    wrapped = np.where(ids == 0, 0, (ids - 1) % (len(PALETTE) - 1) + 1)
    return PALETTE[wrapped]


def mask_rgb(masks: np.ndarray, palette: bool | None = None) -> np.ndarray:
    """Binary masks white on black; class ids (or ``palette=True``) in the class palette."""
    if palette is None:
        palette = bool(masks.max(initial=0) > 1)
    if not palette:
        return np.repeat((masks > 0)[..., None] * 255, 3, -1).astype(np.uint8)
    return colour_masks(masks)


def fakes_rgb(fakes: np.ndarray) -> np.ndarray:
    """Fakes as they travel ((B, 3, H, W): uint8 levels, or float in [-1, 1]) -> uint8 (B, H, W, 3)."""
    ims = fakes if fakes.dtype == np.uint8 else ((fakes.astype(np.float32).clip(-1, 1) + 1) * 127.5).round()
    return np.transpose(ims.astype(np.uint8), (0, 2, 3, 1))


def write_sample_grid(masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray, path: Path, rows: int = 4) -> Path:
    """Rows of mask | real | synthetic: what a node keeps on its own disk to look at (reals never leave it)."""
    m, f = mask_rgb(masks)[:rows], fakes_rgb(fakes[:rows])  # one colouring, chosen from the whole batch
    grid = np.concatenate([np.concatenate([m[i], reals[i], f[i]], axis=1) for i in range(len(m))], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def summarize(pairs: PairSet, group_column: str | None = None) -> dict[str, Any]:
    """Counts, each class's pixel share and the share of images that hold it, and the pairs per group."""
    counts = np.bincount(pairs.masks.reshape(-1), minlength=len(pairs.classes))
    present = [(pairs.masks == c).reshape(len(pairs), -1).any(1) for c in range(len(pairs.classes))]
    classes = [{"id": c, "name": name, "pixel_share": float(counts[c] / max(1, counts.sum())),
                "images_with": int(present[c].sum())} for c, name in enumerate(pairs.classes)]
    column = group_column if group_column in pairs.columns else next(iter(pairs.columns), None)
    groups: dict[str, int] = {}
    if column is not None:
        for value in pairs.columns[column]:
            groups[value] = groups.get(value, 0) + 1
    return {"pairs": len(pairs), "size": list(pairs.images.shape[1:3]), "classes": classes,
            "images_without_foreground": int((pairs.masks.reshape(len(pairs), -1) == 0).all(1).sum()),
            "group_column": column, "groups": groups, "columns": sorted(pairs.columns)}


def write_grid(pairs: PairSet, path: Path, count: int = 8, seed: int = 0) -> Path:
    """A grid of ``count`` pairs: image over its mask in the class palette; pairs with foreground first."""
    rng = np.random.default_rng(seed)
    has = (pairs.masks.reshape(len(pairs), -1) > 0).any(1)
    order = np.concatenate([rng.permutation(np.flatnonzero(has)), rng.permutation(np.flatnonzero(~has))])
    pick = order[:count]
    top = np.concatenate(list(pairs.images[pick]), axis=1)
    bottom = np.concatenate(list(colour_masks(pairs.masks[pick])), axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(path)
    return path
