"""Procedural remote-sensing scenes: the built-in data, made from a seed, no download.

``buildings``: ground texture, vegetation, water, roads, and buildings (rotated
rectangles and L-shapes) with roof colours and cast shadows; the mask marks
buildings.  ``buildings-roads``: the same images, with roads as a second class
(mask 1 = building, 2 = road).  ``ships``: open water with wakes and a coast,
the mask marks ships.
Scenes are deterministic per (seed, size, variant) and fast enough to make
thousands per second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

VARIANTS = ("buildings", "buildings-roads", "ships")
CLASSES = {"buildings": ("background", "building"), "buildings-roads": ("background", "building", "road"),
           "ships": ("background", "ship")}
ROOFS = np.array([[182, 178, 170], [205, 200, 190], [160, 82, 60], [120, 120, 128], [225, 220, 210],
                  [150, 110, 80], [95, 110, 125]], np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


@lru_cache(maxsize=32)
def _smooth_tile(size: int, cells: int, k: int) -> np.ndarray:
    """A fixed value-noise tile (twice the scene size) to cut windows from."""
    small = np.random.default_rng([size, cells, k]).random((2 * cells, 2 * cells), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((2 * size, 2 * size), Image.BILINEAR))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1] with about ``cells`` blobs across: a random window of one of 4 cached tiles,
    randomly flipped and transposed, so scenes differ without resizing anything per scene."""
    k, oy, ox, flip = rng.integers(0, [4, size, size, 8])
    t = _smooth_tile(size, cells, int(k))[oy:oy + size, ox:ox + size]
    if flip & 1:
        t = t[::-1]
    if flip & 2:
        t = t[:, ::-1]
    return t.T if flip & 4 else t


def _paint(img: np.ndarray, where: np.ndarray, colour: np.ndarray | float) -> None:
    """img[where] = colour, as arithmetic (much faster than boolean indexing on whole frames)."""
    m = where.astype(np.float32)[..., None]
    delta = colour - img
    delta *= m
    img += delta


def _rect(y: np.ndarray, x: np.ndarray, cy: float, cx: float, h: float, w: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)


def make_scene(seed: int, size: int = 128, variant: str = "buildings") -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 (size, size, 3), mask uint8 (size, size) of class ids, see ``CLASSES``)."""
    if variant in ("buildings", "buildings-roads"):  # one image per seed: only the mask differs
        return _buildings(np.random.default_rng([seed, 0]), size, roads=variant == "buildings-roads")
    if variant == "ships":
        return _ships(np.random.default_rng([seed, 1]), size)
    raise ValueError(f"unknown scene variant {variant!r}; choose from {', '.join(VARIANTS)}")


def make_scenes(seeds: list[int] | range, size: int = 128,
                variant: str = "buildings") -> tuple[np.ndarray, np.ndarray]:
    """Many scenes: images (N, size, size, 3) and masks (N, size, size)."""
    images = np.empty((len(seeds), size, size, 3), np.uint8)
    masks = np.empty((len(seeds), size, size), np.uint8)
    for i, seed in enumerate(seeds):
        images[i], masks[i] = make_scene(int(seed), size, variant)
    return images, masks


@lru_cache(maxsize=8)
def _grain_tile(size: int) -> np.ndarray:
    """Fixed per-pixel grain, twice the scene size; scenes take random windows of it."""
    return np.random.default_rng(1234).normal(0, 1, (2 * size, 2 * size, 1)).astype(np.float32)


def _grain(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    oy, ox = rng.integers(0, size, 2)
    return _grain_tile(size)[oy:oy + size, ox:ox + size] * sigma


def _buildings(rng: np.random.Generator, size: int, roads: bool = False) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    scale = size / 128
    base = rng.uniform([150, 130, 100], [205, 185, 150]).astype(np.float32)  # sand to dry soil
    tex = _smooth_noise(rng, size, 6)[..., None]
    img = base * (0.8 + 0.35 * tex)
    img += _grain(rng, size, 6.0)
    veg = _smooth_noise(rng, size, 5) > rng.uniform(0.55, 0.8)
    green = np.array([70, 105, 55], np.float32) * (0.8 + 0.4 * _smooth_noise(rng, size, 16)[..., None])
    _paint(img, veg, green)
    blocked = veg.copy()
    if rng.random() < 0.3:
        water = _smooth_noise(rng, size, 3) > 0.72
        _paint(img, water, np.array([40, 75, 105], np.float32) + 10 * tex)
        blocked |= water
    road_mask: np.ndarray | None = None
    for _ in range(rng.integers(1, 4)):  # roads
        angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15)
        cy, cx = rng.uniform(0, size, 2)
        width = rng.uniform(4, 8) * scale
        road = np.abs((y - cy) * np.cos(angle) - (x - cx) * np.sin(angle)) <= width / 2
        _paint(img, road, np.array([95, 95, 98], np.float32) + rng.normal(0, 3))
        blocked |= road
        road_mask = road if road_mask is None else road_mask | road
    mask = np.zeros((size, size), bool)
    shadow_dy, shadow_dx = rng.uniform(1.5, 4, 2) * scale
    n_attempts = int(rng.integers(10, 30))
    params = rng.uniform(0, 1, (n_attempts, 8))  # one draw for every attempt: cheaper than many small draws
    for h, w, cy, cx, a, jitter, l_shape, roof_pick in params:
        h, w = (7 + 17 * h) * scale, (7 + 17 * w) * scale
        cy, cx = cy * size, cx * size
        if blocked[int(cy), int(cx)] or mask[int(cy), int(cx)]:
            continue  # the centre is already taken: skip before any array work
        angle = (np.pi / 2 if a < 0.5 else 0.0) + (jitter - 0.5) * 0.6
        r = int(max(h, w)) + 6
        y0, y1, x0, x1 = max(0, int(cy) - r), min(size, int(cy) + r), max(0, int(cx) - r), min(size, int(cx) + r)
        ys, xs = y[y0:y1, x0:x1], x[y0:y1, x0:x1]
        shape = _rect(ys, xs, cy, cx, h, w, angle)
        if l_shape < 0.35:  # L-shape: a second wing at one end
            c, s = np.cos(angle), np.sin(angle)
            off = w / 2 - w / 6
            shape |= _rect(ys, xs, cy + off * s + h / 2 * c, cx + off * c - h / 2 * s, h, w / 3, angle)
        taken = mask[y0:y1, x0:x1]
        if (blocked[y0:y1, x0:x1] & shape).mean() > 0.02 or (taken & shape).any():
            continue
        shadow = _rect(ys, xs, cy + shadow_dy, cx + shadow_dx, h, w, angle) & ~shape & ~taken
        region = img[y0:y1, x0:x1]
        region[shadow] *= 0.55
        roof = ROOFS[int(roof_pick * len(ROOFS))] * (0.9 + 0.2 * jitter)
        shade = 1 + 0.08 * ((xs[shape] - cx) * np.cos(angle) + (ys[shape] - cy) * np.sin(angle)) / max(w, 1)
        region[shape] = roof * shade[:, None]
        taken |= shape
    np.clip(img, 0, 255, out=img)
    ids = mask.astype(np.uint8)
    if roads and road_mask is not None:
        ids[road_mask & ~mask] = 2
    return img.astype(np.uint8), ids


def _ships(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    scale = size / 128
    tex = _smooth_noise(rng, size, 8)[..., None]
    img = np.array([25, 60, 85], np.float32) * (0.8 + 0.4 * tex)
    img += _grain(rng, size, 3.0)
    land = np.zeros((size, size), bool)
    if rng.random() < 0.4:
        land = _smooth_noise(rng, size, 3) > 0.7
        _paint(img, land, np.array([150, 140, 110], np.float32) * (0.85 + 0.3 * tex))
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(0, 6)):
        length, width = rng.uniform(10, 32) * scale, rng.uniform(3, 7) * scale
        cy, cx = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        r = int(2 * length) + 2  # the wake trails up to 2 lengths behind
        y0, y1, x0, x1 = max(0, int(cy) - r), min(size, int(cy) + r), max(0, int(cx) - r), min(size, int(cx) + r)
        ys, xs = y[y0:y1, x0:x1], x[y0:y1, x0:x1]
        c, s = np.cos(angle), np.sin(angle)
        u = (xs - cx) * c + (ys - cy) * s
        v = -(xs - cx) * s + (ys - cy) * c
        taper = np.clip((length / 2 - u) / (length / 3), 0, 1)  # pointed bow
        hull = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2 * np.minimum(1, taper + 0.2))
        taken = mask[y0:y1, x0:x1]
        if (hull & land[y0:y1, x0:x1]).any() or (hull & taken).any():
            continue
        region = img[y0:y1, x0:x1]
        wake = (u < -length / 2) & (u > -length * 2) & (np.abs(v) <= width * (0.5 - u / length / 2) / 2) & ~taken
        region[wake] = region[wake] * 0.6 + 0.4 * 200
        region[hull] = np.array([rng.uniform(180, 240)] * 3, np.float32) * rng.uniform(0.85, 1.0, 3)
        taken |= hull
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), mask.astype(np.uint8)
