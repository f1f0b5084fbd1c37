"""DiffAugment (Zhao et al., NeurIPS 2020) for a conditional discriminator, at the node.

A small department's discriminator memorises its few images and then gives the
generator a useless signal.  DiffAugment shows D only randomly augmented real
and fake images, with augmentations that are differentiable so the generator's
gradient flows back through them.  Policy ``color,translation,cutout`` as in the
paper.  The discriminator here sees (mask, image) pairs, so translation and
cutout move the mask with the image (colour changes the image alone); every
call draws its own parameters, for reals and fakes alike.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def _color(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    r = lambda: torch.rand(n, 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)  # noqa: E731
    x = x + (r() - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r() * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r() + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, g: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each sample by up to ``ratio`` of its size, filling with zeros (padding, then a gather)."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (n, 1, 1), generator=g, device=x.device)
    tx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=g, device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    yy = torch.clamp(gy[None] + ty + 1, 0, h + 1)
    xx = torch.clamp(gx[None] + tx + 1, 0, w + 1)
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
    idx = (yy * (w + 2) + xx).view(n, 1, -1).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, idx).view_as(x)


def _cutout(x: torch.Tensor, g: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` of the size per sample, centred anywhere in the image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h, (n, 1, 1), generator=g, device=x.device) - ch // 2
    x0 = torch.randint(0, w, (n, 1, 1), generator=g, device=x.device) - cw // 2
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    inside = (gy[None] >= y0) & (gy[None] < y0 + ch) & (gx[None] >= x0) & (gx[None] < x0 + cw)
    return x * (~inside).to(x.dtype)[:, None]


def diff_augment(mask: torch.Tensor, image: torch.Tensor, policy: tuple[str, ...] = POLICIES,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a (mask input, image) batch for D: colour on the image, geometry on both together."""
    if "color" in policy:
        image = _color(image, generator)
    both = torch.cat([mask, image], dim=1)
    if "translation" in policy:
        both = _translation(both, generator)
    if "cutout" in policy:
        both = _cutout(both, generator)
    return both[:, :mask.shape[1]], both[:, mask.shape[1]:]
