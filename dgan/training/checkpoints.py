"""Generator checkpoints: written atomically, read as tensors and plain values only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    pass


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as tensors and ints, so checkpoints load with ``weights_only=True``."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    key = state["key"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], key, state["pos"], state["has_gauss"], state["gauss"]))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors and plain values only (``weights_only``): a crafted checkpoint cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "G" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a dgan generator checkpoint")
    return state
