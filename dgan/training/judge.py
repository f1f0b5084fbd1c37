"""A node's judge of the fakes: does the generator draw buildings where the masks say?

The node trains a small segmenter on its own real pairs (they never leave it)
and reports one scalar per batch, the IoU of that segmenter's prediction on the
fakes against the masks they were drawn for.  It is the same measure the
segmentation experiment makes at the end, taken live and without any test
data, so a generator that degrades is visible while it trains and the run can
keep the weights the nodes judged best.
"""

from __future__ import annotations

import numpy as np
import torch

from dgan.networks import fakes_from_wire, images_to_tensor
from dgan.segment import SegConfig, define_segmenter, segmentation_loss


class LabelJudge:
    def __init__(self, seed: int | None = 0, width: int = 8, depth: int = 3, lr: float = 1e-3,
                 device: str = "cpu") -> None:
        if seed is not None:
            torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = define_segmenter(SegConfig(width=width, depth=depth)).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.steps = 0

    def train_step(self, reals: np.ndarray, masks: np.ndarray) -> float:
        """One step on real (image, mask) pairs, uint8 (B, H, W, 3) and (B, H, W)."""
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(reals))).to(self.device)
        y = torch.from_numpy((np.ascontiguousarray(masks) > 0).astype(np.float32))[:, None].to(self.device)
        self.model.train()
        loss = segmentation_loss(self.model(x), y)
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
        pred = (self.model(x)[:, 0] > 0).cpu().numpy()
        truth = masks > 0
        union = float(np.sum(pred | truth))
        return float(np.sum(pred & truth)) / union if union else 1.0
