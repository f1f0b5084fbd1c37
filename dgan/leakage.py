"""Does a log's feedback carry the nodes' real images?  Statistics for ``dgan replay --audit``.

For every recorded feedback whose mask identifies a real image (``--real-data``),
compare the gradient with that image, and with a control that knows the mask
but not the image: each class's mean colour over the real images, painted onto
this mask.

* sign agreement between ``sign(grad)`` and ``sign(fake - real)``: 1.0 for the
  L1 term, 0.5 for a gradient that knows nothing of this image;
* absolute Pearson correlation between the gradient and the real image (any
  sign: the L1 leak is anti-correlated with the image).

A statistic counts as a leak when the real image beats the control by a
margin.  The control removes what a discriminator is for (what buildings and
ground look like, where this mask puts them); what is left is what the
gradient knows about this one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgan.attacks import canonical, feedback_samples, flip, index_real

AGREEMENT_MARGIN = 0.10  # sign agreement above the control's
CORRELATION_MARGIN = 0.10  # |corr| above the control's


@dataclass
class NodeLeakage:
    samples: int = 0
    agreement: list[float] = field(default_factory=list)
    control_agreement: list[float] = field(default_factory=list)
    abs_corr: list[float] = field(default_factory=list)
    control_abs_corr: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def m(v: list[float]) -> float:
            return float(np.mean(v)) if v else float("nan")

        return {"samples": self.samples, "matched": len(self.agreement), "sign_agreement": m(self.agreement),
                "control_sign_agreement": m(self.control_agreement), "abs_corr": m(self.abs_corr),
                "control_abs_corr": m(self.control_abs_corr)}

    def leaks(self) -> list[str]:
        s = self.summary()
        out = []
        if s["matched"] and s["sign_agreement"] - s["control_sign_agreement"] >= AGREEMENT_MARGIN:
            out.append(f"sign(grad) agrees with sign(fake - real) on {s['sign_agreement']:.1%} of pixels "
                       f"(class-colour control {s['control_sign_agreement']:.1%}): the gradient carries the real "
                       "image")
        if s["matched"] and s["abs_corr"] - s["control_abs_corr"] >= CORRELATION_MARGIN:
            out.append(f"|corr(grad, real)| = {s['abs_corr']:.3f} (class-colour control "
                       f"{s['control_abs_corr']:.3f})")
        if s["samples"] and not s["matched"]:
            out.append(f"none of its {s['samples']} feedback samples matched a real image by mask, so its gradients "
                       "went unchecked: is --real-data this node's data at the run's size?")
        return out


def _stats(grad: np.ndarray, fake: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    nz = grad != 0
    agree = float((np.sign(grad) == np.sign(fake - real))[nz].mean()) if nz.any() else 0.5
    g, r = grad.ravel() - grad.mean(), real.ravel() - real.mean()
    denom = float(np.linalg.norm(g) * np.linalg.norm(r))
    return agree, abs(float(g @ r) / denom) if denom > 0 else 0.0


def class_colours(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(classes, 3) mean colour in [-1, 1] of each class's pixels over all the real pairs."""
    labels = masks.astype(np.int64).ravel()
    pixels = images.reshape(-1, 3).astype(np.float64) / 127.5 - 1
    n = int(labels.max(initial=0)) + 1
    counts = np.bincount(labels, minlength=n).clip(min=1)
    return np.stack([np.bincount(labels, pixels[:, c], minlength=n) / counts for c in range(3)], 1)


def gradient_leakage(path: Path, images: np.ndarray, masks: np.ndarray,
                     max_samples: int = 2000) -> dict[str, NodeLeakage]:
    """Per node: sign agreement and |correlation| of recorded gradients with the matched real images, and with
    the class-colour control; at most ``max_samples`` matched samples per node."""
    real = {k: np.transpose(v, (2, 0, 1)).astype(np.float32) / 127.5 - 1 for k, v in index_real(images, masks).items()}
    colours = class_colours(images, masks).astype(np.float32)
    out: dict[str, NodeLeakage] = {}
    for node, batch_masks, fakes, grads in feedback_samples(path):
        stats = out.setdefault(node, NodeLeakage())
        for mask, fake, grad in zip(batch_masks, fakes, grads, strict=True):
            stats.samples += 1
            canon = canonical(mask)
            if canon is None or canon[0] not in real or len(stats.agreement) >= max_samples:
                continue
            key, code = canon
            m = np.ascontiguousarray(flip(mask, code)).astype(np.int64).clip(0, len(colours) - 1)
            f, g = flip(fake, code), flip(grad, code)
            agree, corr = _stats(g, f, real[key])
            c_agree, c_corr = _stats(g, f, np.transpose(colours[m], (2, 0, 1)))
            stats.agreement.append(agree)
            stats.abs_corr.append(corr)
            stats.control_agreement.append(c_agree)
            stats.control_abs_corr.append(c_corr)
    return out
