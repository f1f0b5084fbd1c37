"""Generator, discriminator and GAN loss (pix2pix-style), sized for CPU by default.

``define_G`` builds a conditional U-Net (mask -> RGB in [-1, 1]) whose decoder
dropout is its noise source; ``define_D`` a PatchGAN on (mask, image);
``define_seg_D`` the OASIS per-pixel (classes + 1) segmenter of the image alone;
``define_task_segmenter`` the semantic feedback mode's plain segmenter.  No
pretrained weights anywhere: everything is initialised from a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class ModelConfig:
    image_size: int = 128
    num_classes: int = 2  # 2 = binary masks (one input channel); C > 2 = one-hot
    g_width: int = 32
    g_depth: int = 5
    dropout: float = 0.5
    upsample: str = "bilinear"  # "bilinear" (resize-conv: no checkerboard) or "deconv"
    d_width: int = 32
    d_layers: int = 3
    norm: str = "instance"
    gan_mode: str = "vanilla"  # "vanilla" (BCE with logits) or "lsgan"
    # No loss weights here: the loss a node's gradient is of is the node's own (dgan.feedback).

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Known fields only: older checkpoints and peers carried loss settings (``lambda_l1``) here."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def mask_channels(self) -> int:
        return 1 if self.num_classes == 2 else self.num_classes


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (instance, batch or none)")


class UNetGenerator(nn.Module):
    """U-Net: strided-conv encoder, upsampling decoder with skips, dropout in the deepest decoder blocks."""

    def __init__(self, in_ch: int, out_ch: int = 3, width: int = 32, depth: int = 5, dropout: float = 0.5,
                 upsample: str = "bilinear", norm: str = "instance", final: str = "tanh") -> None:
        super().__init__()
        chans = [width * min(2**i, 8) for i in range(depth)]
        self.down = nn.ModuleList()
        prev = in_ch
        for i, ch in enumerate(chans):
            layers: list[nn.Module] = [nn.Conv2d(prev, ch, 4, 2, 1, bias=norm == "none" or i == 0)]
            if 0 < i < depth - 1:
                layers.append(_norm(norm, ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            prev = ch
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            out = chans[i - 1] if i > 0 else width
            inp = chans[i] if i == depth - 1 else chans[i] * 2
            if upsample == "deconv":
                layers = [nn.ConvTranspose2d(inp, out, 4, 2, 1, bias=False)]
            elif upsample == "bilinear":
                layers = [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          nn.Conv2d(inp, out, 3, 1, 1, bias=False)]
            else:
                raise ValueError(f"unknown upsample {upsample!r} (bilinear or deconv)")
            layers += [_norm(norm, out), nn.ReLU(inplace=True)]
            if dropout > 0 and i >= depth - 3 and i > 0:  # pix2pix: dropout in the innermost decoder blocks
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        head: list[nn.Module] = [nn.Conv2d(width + in_ch, out_ch, 3, 1, 1)]
        if final == "tanh":  # images in [-1, 1]; "none" leaves logits (segmentation)
            head.append(nn.Tanh())
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = block(h)
            if skips:
                h = torch.cat([h, skips.pop()], 1)
        return self.head(torch.cat([h, x], 1))


class PatchDiscriminator(nn.Module):
    """PatchGAN: one logit per overlapping patch of (mask, image)."""

    def __init__(self, in_ch: int, width: int = 32, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=norm == "none"), _norm(norm, out),
                       nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([mask, image], 1))


class GANLoss(nn.Module):
    """The adversarial loss against a real/fake target of the prediction's shape."""

    def __init__(self, mode: str = "vanilla") -> None:
        super().__init__()
        if mode == "vanilla":
            self.loss: nn.Module = nn.BCEWithLogitsLoss()
        elif mode == "lsgan":
            self.loss = nn.MSELoss()
        else:
            raise ValueError(f"unknown gan mode {mode!r} (vanilla or lsgan)")

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return self.loss(prediction, target)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix's normal(0, 0.02) initialisation."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def define_G(cfg: ModelConfig) -> UNetGenerator:
    if cfg.image_size % (2**cfg.g_depth):
        raise ValueError(f"image size {cfg.image_size} must be divisible by 2**depth = {2**cfg.g_depth}")
    return init_weights(UNetGenerator(cfg.mask_channels, 3, cfg.g_width, cfg.g_depth, cfg.dropout, cfg.upsample,
                                      cfg.norm))


def define_D(cfg: ModelConfig) -> PatchDiscriminator:
    return init_weights(PatchDiscriminator(cfg.mask_channels + 3, cfg.d_width, cfg.d_layers, cfg.norm))


def _image_segmenter(cfg: ModelConfig, outputs: int) -> UNetGenerator:
    """A U-Net of the image alone at half the PatchGAN's width, one level deeper than it."""
    depth = cfg.d_layers + 2
    while depth > 2 and cfg.image_size % (2**depth):  # any size the generator accepts works here too
        depth -= 1
    return init_weights(UNetGenerator(3, outputs, max(8, cfg.d_width // 2), depth, dropout=0.0,
                                      upsample=cfg.upsample, norm=cfg.norm, final="none"))


def define_seg_D(cfg: ModelConfig) -> UNetGenerator:
    """OASIS-style discriminator: a U-Net segmenter of the image alone, logits for (fake, class 1..C).

    Half the PatchGAN's width, one level deeper: a full-resolution decoder costs about 3x the PatchGAN
    per batch at 128 px on a CPU (measured), instead of 6x at full width.
    """
    return _image_segmenter(cfg, cfg.num_classes + 1)


def define_task_segmenter(cfg: ModelConfig) -> UNetGenerator:
    """The semantic mode's segmenter: logits for class 0..C-1, trained on a node's real pairs only."""
    return _image_segmenter(cfg, cfg.num_classes)


def masks_to_input(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, H, W) of class ids -> network input: binary in [-1, 1], else one-hot."""
    if num_classes == 2:
        return (masks > 0).float().unsqueeze(1) * 2 - 1
    return nn.functional.one_hot(masks.long().clamp_(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()


def images_to_tensor(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def fakes_from_wire(fakes: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fakes as they arrive (numpy (B, 3, H, W): float, or uint8 levels from ``fakes_to_wire``) -> a float
    tensor in [-1, 1]; always a copy, since wire frames are read-only."""
    x = torch.tensor(fakes, dtype=torch.float32, device=device)
    return x / 127.5 - 1 if fakes.dtype == np.uint8 else x


def tensor_to_images(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
