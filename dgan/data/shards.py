"""What data a node holds: a shard spec (JSON) resolved to image and mask arrays.

``dgan run`` writes one shard file per node; a node started by hand may also
name any dataset :mod:`dgan.data.spec` knows (``scenes``, a pairs folder, ``whu:PATH``...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

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
        from dgan.data.loaders import load_pairs_folder

        pairs = load_pairs_folder(Path(spec["path"]), size, spec.get("names"))
        if spec.get("binary"):  # for a binary run: a multi-class folder's first class against the rest
            from dgan.data.spec import binary

            pairs = binary(pairs)
        return pairs.images, pairs.masks
    raise DataError(f"unknown data kind {kind!r} in shard spec")


def read_shard(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A shard spec file (what ``dgan run`` writes per node) -> images and masks."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read shard spec {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: a shard spec is a JSON object with a 'kind'")
    return load_spec(spec, size)


def resolve_data(data: str, size: int, count: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``--data``: any spec :mod:`dgan.data.spec` names (``scenes``, ``whu:PATH``, a folder, a shard .json...)."""
    from dgan.data.spec import load_data

    pairs = load_data(data, size, count=count, seed=seed)
    return pairs.images, pairs.masks


def resolve_real_data(spec: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``--real-data``: what ``resolve_data`` takes, or a run's ``shards/`` folder (every node's shard together)."""
    path = Path(spec)
    shards = sorted(path.glob("*.json")) if path.is_dir() and not (path / "images").is_dir() else []
    if not shards:
        return resolve_data(spec, size)
    parts = [resolve_data(str(p), size) for p in shards]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
