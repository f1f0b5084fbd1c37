"""How a node's gradient goes on the wire, and how the generator reads it back.

float32 and float16 are sent as they are (float16 after a scale that keeps it out
of the subnormal range).  int8 halves float16's bytes: each sample is divided by
its own largest magnitude and rounded *stochastically* to 127 levels, so the
quantised gradient is unbiased (E[q * s] = g, as in QSGD) and a sample with tiny
gradients keeps its resolution next to one with large ones.  The per-sample
scales travel as a small float32 tensor, ``grad_scales``.

Numpy only: the generator validates peer input here before any torch work.
"""

from __future__ import annotations

import numpy as np

INT8_LEVELS = 127  # symmetric: -127..127, so 0 is exact and no level is wasted on -128


def quantize_int8(grad: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample, stochastically rounded int8 and its float32 scales: ``grad ~= q * scales[:, None, None, None]``."""
    g = np.asarray(grad, np.float32)
    flat = g.reshape(len(g), -1)
    finite = np.isfinite(flat).all(axis=1) if flat.size else np.ones(len(g), bool)
    flat = np.where(finite[:, None], flat, 0.0)
    peak = np.abs(flat).max(axis=1) if flat.size else np.zeros(len(g), np.float32)
    scales = np.where(peak > 0, peak / INT8_LEVELS, 1.0).astype(np.float32)
    x = flat / scales[:, None]
    low = np.floor(x)
    q = low + (rng.random(x.shape, dtype=np.float32) < (x - low))  # round up with probability = the fraction
    # A sample holding NaN or Inf gets a NaN scale: the receiver refuses it, as it refuses a float gradient with one.
    scales = np.where(finite, scales, np.float32(np.nan)).astype(np.float32)
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8).reshape(g.shape), scales


def decode(grad: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The float32 gradient a FEEDBACK carries; ValueError with the reason when the pair is malformed."""
    if grad.dtype == np.int8:
        if scales is None:
            raise ValueError("an int8 gradient needs its per-sample 'grad_scales' tensor")
        if scales.dtype != np.float32 or scales.shape != (grad.shape[0],):
            raise ValueError(f"'grad_scales' must be float32 of shape [{grad.shape[0]}], got "
                             f"{scales.dtype}{list(scales.shape)}")
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise ValueError("'grad_scales' must be finite and non-negative")
        return grad.astype(np.float32) * scales.reshape(-1, *([1] * (grad.ndim - 1)))
    if scales is not None:
        raise ValueError(f"'grad_scales' comes only with an int8 gradient, not {grad.dtype}")
    return np.asarray(grad, np.float32)


def bytes_per_sample(grad_dtype: str, shape: tuple[int, ...]) -> int:
    """Gradient bytes one sample of this shape (C, H, W) costs on the wire, scales included."""
    return int(np.prod(shape)) * np.dtype(grad_dtype).itemsize + (4 if grad_dtype == "int8" else 0)
