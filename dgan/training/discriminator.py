"""What a node does with fakes: one D step, then the generator's loss and its gradient.

Only the gradient w.r.t. the fake images and loss scalars leave this class;
the real images and D's weights stay inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgan.networks import GANLoss, ModelConfig, define_D, images_to_tensor, masks_to_input


@dataclass
class Scored:
    grad: np.ndarray  # d(generator loss)/d(fakes) * grad_scale, (B, 3, H, W)
    losses: dict[str, float]
    grad_scale: float  # the receiver divides by this; keeps float16 gradients out of the subnormal range


class PairSampler:
    """Draws batches of (image, mask) with the same random crop and flip for both."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, size: int, seed: int = 0) -> None:
        if len(images) != len(masks) or len(images) == 0:
            raise ValueError(f"need matching, non-empty images and masks, got {len(images)} and {len(masks)}")
        if images.shape[1] < size or images.shape[2] < size:
            raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} are smaller than the run size {size}")
        self.images, self.masks, self.size = images, masks, size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(0, len(self.images), n)
        h, w = self.images.shape[1:3]
        ims = np.empty((n, self.size, self.size, 3), np.uint8)
        ms = np.empty((n, self.size, self.size), np.uint8)
        for j, i in enumerate(idx):
            y = int(self.rng.integers(0, h - self.size + 1))
            x = int(self.rng.integers(0, w - self.size + 1))
            im = self.images[i, y:y + self.size, x:x + self.size]
            m = self.masks[i, y:y + self.size, x:x + self.size]
            if self.rng.random() < 0.5:
                im, m = im[:, ::-1], m[:, ::-1]
            if self.rng.random() < 0.5:
                im, m = im[::-1], m[::-1]
            ims[j], ms[j] = im, m
        return ims, ms


class DiscriminatorTrainer:
    """A node's discriminator and its optimiser."""

    def __init__(self, cfg: ModelConfig, lr: float = 2e-4, beta1: float = 0.5, seed: int = 0,
                 device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.D = define_D(cfg).to(self.device)
        self.opt = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(beta1, 0.999))
        self.gan_loss = GANLoss(cfg.gan_mode)
        self.steps = 0

    def score(self, masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray,
              grad_dtype: str = "float32") -> Scored:
        """D step on (mask, real) vs (mask, fake), then G's loss on these fakes and d(loss)/d(fakes)."""
        dev = self.device
        m = masks_to_input(torch.from_numpy(np.ascontiguousarray(masks)).to(dev), self.cfg.num_classes)
        real = images_to_tensor(torch.from_numpy(np.ascontiguousarray(reals)).to(dev))
        fake = torch.tensor(fakes, dtype=torch.float32, device=dev)  # a copy: wire frames are read-only
        if fakes.dtype == np.uint8:
            fake = fake / 127.5 - 1
        self.D.train()
        # 1. discriminator step
        self.opt.zero_grad(set_to_none=True)
        d_real = self.gan_loss(self.D(m, real), True)
        d_fake = self.gan_loss(self.D(m, fake), False)
        ((d_real + d_fake) * 0.5).backward()
        self.opt.step()
        # 2. generator's loss on the same fakes, with the updated D (pix2pix order)
        fake.requires_grad_(True)
        for p in self.D.parameters():
            p.requires_grad_(False)
        try:
            g_adv = self.gan_loss(self.D(m, fake), True)
            g_l1 = torch.nn.functional.l1_loss(fake, real)
            g_total = g_adv + self.cfg.lambda_l1 * g_l1
            (grad,) = torch.autograd.grad(g_total, fake)
        finally:
            for p in self.D.parameters():
                p.requires_grad_(True)
        self.steps += 1
        losses = {k: float(v.detach()) for k, v in
                  (("d_real", d_real), ("d_fake", d_fake), ("g_adv", g_adv), ("g_l1", g_l1), ("g_total", g_total))}
        scale = float(grad.numel())
        return Scored((grad * scale).cpu().numpy().astype(grad_dtype, copy=False), losses, scale)
