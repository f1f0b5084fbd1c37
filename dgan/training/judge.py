"""A node's judge of the fakes: does the generator draw buildings where the masks say?

The node trains a small segmenter on its own real pairs (they never leave it)
and reports one scalar per batch, the IoU of that segmenter's prediction on the
fakes against the masks they were drawn for.  It is the same measure the
segmentation experiment makes at the end, taken live and without any test
data, so a generator that degrades is visible while it trains and the run can
keep the weights the nodes judged best.

``label_iou`` asks whether a segmenter made from real images finds the masks in
the fakes.  It can be high while a segmenter made from the fakes finds nothing
in real images (buildings drawn in a colour no real roof has: a real run gave
label_iou 0.40, its best, and a synthetic set that scored 0.0003).  So the node
also asks the converse, which is the question the experiment asks at the end:
:class:`TransferJudge` trains a fresh small segmenter on the last fakes it was
sent and tests it on its own real pairs (``transfer_iou``).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from dgan.cpu_features import precision_autocast, rng_devices
from dgan.networks import fakes_from_wire, images_to_tensor
from dgan.segment import SegConfig, define_segmenter, segmentation_loss


class LabelJudge:
    """``precision`` ``bf16``: its forward passes under bf16 autocast, as the node's D (the node passes its own,
    resolved): at fp32 the two judges cost a node more than its D does (128 px, measured in session 25)."""

    def __init__(self, seed: int | None = 0, width: int = 8, depth: int = 3, lr: float = 1e-3,
                 device: str = "cpu", precision: str = "fp32") -> None:
        _check_precision(precision)
        if seed is not None:
            torch.manual_seed(seed)
        self.device = torch.device(device)
        self.precision = precision
        self.model = define_segmenter(SegConfig(width=width, depth=depth)).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.steps = 0

    def train_step(self, reals: np.ndarray, masks: np.ndarray) -> float:
        """One step on real (image, mask) pairs, uint8 (B, H, W, 3) and (B, H, W)."""
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(reals))).to(self.device)
        y = torch.from_numpy((np.ascontiguousarray(masks) > 0).astype(np.float32))[:, None].to(self.device)
        return self.step_on(x, y)

    def step_on(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step on images in [-1, 1] (B, 3, H, W) and foreground targets (B, 1, H, W)."""
        self.model.train()
        with self.autocast():  # the forward pass only: backward runs outside autocast, as PyTorch advises
            logits = self.model(x)
        loss = segmentation_loss(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1
        return float(loss.detach())

    @torch.no_grad()
    def label_iou(self, fakes: np.ndarray, masks: np.ndarray) -> float:
        """IoU of the judge's foreground on the fakes (wire layout (B, 3, H, W)) against their masks."""
        x = fakes_from_wire(fakes, self.device)
        self.model.eval()
        with self.autocast():
            return _iou((self.model(x)[:, 0] > 0).cpu().numpy(), masks > 0)

    def autocast(self) -> torch.autocast:
        return precision_autocast(self.device, self.precision)


def _check_precision(precision: str) -> None:
    """A judge takes its node's resolved precision: ``auto`` is the node's to resolve, before it builds them."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"a judge runs in fp32 or bf16, got {precision!r}")


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = float(np.sum(pred | truth))
    return float(np.sum(pred & truth)) / union if union else 1.0


class TransferJudge:
    """Train on the fakes, test on this node's real pairs: would a set drawn by G work here?

    Every ``every`` batches it gives a verdict: the IoU, on ``reals`` (a fixed set of the node's own crops), of
    a fresh segmenter (the label judge's size) trained for ``steps`` steps on that window's fakes with their
    masks (at most the last ``keep``).  A fresh model and fresh fakes each window: the verdict is about the
    fakes of now, not about everything seen so far.  The steps are spread over the window's batches, a few
    after each, because done at once they stalled the node for seconds at 128 px: the feedback in flight then
    reached the generator too stale to use.  Only the scalar leaves the node.  ``seed`` fixes the
    segmenters' draws (None: the OS's randomness); the node's own torch stream is never moved.
    """

    def __init__(self, reals: np.ndarray, masks: np.ndarray, every: int = 16, steps: int = 60, keep: int = 64,
                 batch: int = 8, seed: int | None = None, device: str = "cpu", precision: str = "fp32") -> None:
        if every < 1 or steps < 1 or keep < 1 or batch < 1:
            raise ValueError("every, steps, keep and batch must be >= 1")
        if len(reals) != len(masks) or len(reals) == 0:
            raise ValueError(f"need matching, non-empty real images and masks, got {len(reals)} and {len(masks)}")
        _check_precision(precision)
        self.every, self.steps, self.batch, self.precision = every, steps, batch, precision
        self.device = torch.device(device)
        self.reals = images_to_tensor(torch.from_numpy(np.ascontiguousarray(reals))).to(self.device)
        self.truth = np.ascontiguousarray(masks) > 0
        self.fakes: deque[torch.Tensor] = deque(maxlen=keep)  # this window's, (3, H, W) in [-1, 1]
        self.masks: deque[np.ndarray] = deque(maxlen=keep)
        self.batches = 0
        self.rng = np.random.default_rng(seed)
        self.verdicts = 0
        self.window: LabelJudge | None = None  # the segmenter of the current window

    def remember(self, fakes: np.ndarray, masks: np.ndarray) -> float | None:
        """One batch as it arrived (fakes in wire layout (B, 3, H, W), masks (B, H, W)): this batch's share of
        the window's training, and the window's verdict when this batch closes it (else None)."""
        i = self.batches % self.every  # this batch's place in its window
        if i == 0:
            self.fakes.clear()
            self.masks.clear()
        self.fakes.extend(fakes_from_wire(fakes, self.device))
        self.masks.extend(np.asarray(masks))
        self.batches += 1
        # The window's own torch stream, seeded from ``rng`` on every call: the node's stays as it was.
        with torch.random.fork_rng(devices=rng_devices(self.device)):
            torch.manual_seed(int(self.rng.integers(2**31)))
            if self.window is None:
                self.window = LabelJudge(seed=None, device=str(self.device), precision=self.precision)
            x = torch.stack(list(self.fakes))
            y = torch.from_numpy((np.stack(list(self.masks)) > 0).astype(np.float32))[:, None].to(self.device)
            for _ in range(self.steps * (i + 1) // self.every - self.steps * i // self.every):  # `steps` in all
                pick = torch.from_numpy(self.rng.integers(0, len(x), self.batch))
                self.window.step_on(x[pick], y[pick])
            if i + 1 < self.every:
                return None
            judge, self.window = self.window, None
            judge.model.eval()
            with torch.no_grad(), judge.autocast():
                pred = (judge.model(self.reals)[:, 0] > 0).cpu().numpy()
        self.verdicts += 1
        return _iou(pred, self.truth)
