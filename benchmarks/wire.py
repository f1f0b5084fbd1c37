"""`dgan bench wire`: what each gradient encoding costs on the wire and what it does to the gradient.

A real node (``DiscriminatorTrainer``, each feedback mode) scores fakes from a
real generator; every gradient is encoded as float16 and as int8 (per-sample
scale, stochastic rounding) and compared with its float32 self.  Bytes per
sample count everything one sample moves each step: the fakes down, the
gradient and the request's binary mask (packed, 8 pixels a byte) up.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dgan import grad_codec
from dgan.data.scenes import make_scenes
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.networks import ModelConfig
from dgan.training.discriminator import F16_SAFE, DiscriminatorTrainer
from dgan.training.generator import GeneratorTrainer, TrainConfig

MODES = ("semantic", "adversarial", "segmentation", "l1")


def _fidelity(exact: np.ndarray, got: np.ndarray) -> dict[str, float]:
    e, g = exact.ravel().astype(np.float64), got.ravel().astype(np.float64)
    norm = float(np.linalg.norm(e)) or 1.0
    return {"rel_l2_error": float(np.linalg.norm(g - e)) / norm,
            "cosine": float(e @ g / (norm * (float(np.linalg.norm(g)) or 1.0))),
            "sign_agreement": float(np.mean(np.sign(e) == np.sign(g)))}


def measure_mode(mode: str, cfg: ModelConfig, batches: int, batch: int, seed: int = 0) -> list[dict[str, Any]]:
    """Each encoding of ``batches`` real gradients of one feedback mode, against float32."""
    reals, masks = make_scenes(range(seed * 1000, seed * 1000 + batches * batch), cfg.image_size)
    gen = GeneratorTrainer(cfg, TrainConfig(seed=seed, fake_dtype="uint8"))
    node = DiscriminatorTrainer(cfg, FeedbackConfig(FeedbackMode(mode), warmup=0), seed=seed + 1)
    rng = np.random.default_rng(seed)
    per: dict[str, list[dict[str, float]]] = {"float16": [], "int8": []}
    for b in range(batches):
        sl = slice(b * batch, (b + 1) * batch)
        fakes = gen.generate("n0", b + 1, masks[sl], request_id=b + 1)
        gen.release_key(b + 1)
        scored = node.score(masks[sl], reals[sl], fakes, "float32")
        exact = scored.grad / scored.grad_scale
        peak = float(np.abs(scored.grad).max())
        f16_scale = min(1.0, F16_SAFE / peak) if peak > 0 else 1.0  # as the node's float16 path scales
        half = (scored.grad * f16_scale).astype(np.float16).astype(np.float32) / (scored.grad_scale * f16_scale)
        per["float16"].append(_fidelity(exact, half))
        q, steps = grad_codec.quantize_int8(scored.grad, rng)
        per["int8"].append(_fidelity(exact, grad_codec.decode(q, steps) / scored.grad_scale))
    shape = (3, cfg.image_size, cfg.image_size)
    mask_b = cfg.image_size * cfg.image_size // 8  # each request's binary mask, packed
    rows = []
    for dtype, fake_dtype in (("float32", "float32"), ("float16", "float16"), ("int8", "uint8")):
        grad_b = grad_codec.bytes_per_sample(dtype, shape)
        fakes_b = int(np.prod(shape)) * np.dtype(fake_dtype).itemsize
        stats = per.get(dtype)
        row = {"mode": mode, "grad_dtype": dtype, "fake_dtype": fake_dtype, "image_size": cfg.image_size,
               "fakes_bytes": fakes_b, "grad_bytes": grad_b, "mask_bytes": mask_b,
               "bytes_per_sample": fakes_b + grad_b + mask_b, "batches": batches}
        for key in ("rel_l2_error", "cosine", "sign_agreement"):
            row[key] = statistics.median(s[key] for s in stats) if stats else (0.0 if key == "rel_l2_error" else 1.0)
        rows.append(row)
    return rows


def run_wire_benchmark(quick: bool, json_out: Path | None) -> dict[str, Any]:
    console = Console()
    size, batches = (64, 3) if quick else (128, 8)
    cfg = ModelConfig(image_size=size, g_width=16 if quick else 32, d_width=16 if quick else 32)
    rows: list[dict[str, Any]] = []
    with console.status("real node gradients, each mode, encoded three ways…"):
        for mode in MODES:
            rows += measure_mode(mode, cfg, batches, batch=4 if quick else 8)
    base = {r["mode"]: r["bytes_per_sample"] for r in rows if r["grad_dtype"] == "float16"}
    for r in rows:
        r["vs_float16"] = r["bytes_per_sample"] / base[r["mode"]]
    result = {"rows": rows, "image_size": size, "quick": quick,
              "note": "bytes per sample per step: fakes down, gradient and the request's packed binary mask up "
                      "(float16 is dgan's default; the 8-bit row is uint8 fakes and int8 gradients); fidelity "
                      "is of the gradient, the median over batches against float32"}
    table = Table(title=f"Gradient encodings on the wire, {size} px (medians over {batches} batches)")
    for col in ("mode", "fakes", "gradient", "bytes/sample", "vs float16", "rel L2 error", "cosine",
                "sign agreement"):
        table.add_column(col, justify="left" if col in ("mode", "fakes", "gradient") else "right")
    for r in rows:
        table.add_row(r["mode"], r["fake_dtype"], r["grad_dtype"], f"{r['bytes_per_sample']:,}",
                      f"{r['vs_float16']:.2f}x",
                      f"{r['rel_l2_error']:.4f}", f"{r['cosine']:.5f}", f"{r['sign_agreement']:.4f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result
