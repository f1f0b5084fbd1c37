"""What a node does with fakes: one D step, then the generator's loss and its gradient.

Only the gradient w.r.t. the fake images and loss scalars leave this class;
the real images and D's weights stay inside it.  Which loss the gradient is of
is the node's own :class:`~dgan.feedback.FeedbackConfig`, never the generator's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dgan.choices import Precision, values
from dgan.cpu_features import precision_autocast, resolve_precision
from dgan.feedback import FeedbackConfig, FeedbackMode
from dgan.grad_codec import quantize_int8
from dgan.networks import (
    GANLoss,
    ModelConfig,
    define_D,
    define_seg_D,
    define_task_segmenter,
    fakes_from_wire,
    images_to_tensor,
    masks_to_input,
)
from dgan.training.diffaugment import diff_augment
from dgan.training.feedback_losses import (
    class_balanced_ce,
    class_colour_loss,
    class_colour_stats,
    class_labels,
    class_weighted_ce,
    label_mix,
)

F16_SAFE = 32_768.0  # largest scaled gradient sent as float16 (its max is 65,504)
TASK_LR = 1e-3  # the semantic mode's segmenter: a plain segmenter's Adam, not the GAN's


@dataclass
class Scored:
    grad: np.ndarray  # d(generator loss)/d(fakes) * grad_scale, (B, 3, H, W)
    losses: dict[str, float]
    grad_scale: float  # the receiver divides by this; keeps float16 gradients out of the subnormal range
    grad_scales: np.ndarray | None = None  # int8 only: each sample's float32 step (``grad_codec``)

    def tensors(self) -> dict[str, np.ndarray]:
        """What the FEEDBACK carries."""
        return {"grad": self.grad} if self.grad_scales is None else {"grad": self.grad, "grad_scales": self.grad_scales}


class PairSampler:
    """Draws batches of (image, mask) with the same random crop and flip for both.

    ``positive_share`` (sparse targets such as ships): that share of crops is placed on a random foreground
    pixel of an image that has one; the rest stay uniform, so empty crops keep their place in the stream.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, size: int, seed: int = 0,
                 positive_share: float | None = None) -> None:
        if len(images) != len(masks) or len(images) == 0:
            raise ValueError(f"need matching, non-empty images and masks, got {len(images)} and {len(masks)}")
        if images.shape[1] < size or images.shape[2] < size:
            raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} are smaller than the run size {size}")
        if positive_share is not None and not 0.0 <= positive_share <= 1.0:
            raise ValueError(f"positive_share must be in [0, 1], got {positive_share}")
        self.images, self.masks, self.size = images, masks, size
        self.rng = np.random.default_rng(seed)
        self.positive_share = positive_share
        self.positives = (np.flatnonzero(masks.reshape(len(masks), -1).any(1)) if positive_share
                          else np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def _origin(self, i: int, h: int, w: int) -> tuple[int, int]:
        """A crop's top-left corner that puts a random foreground pixel of image i inside it."""
        k = self.rng.choice(np.flatnonzero(self.masks[i]))
        py, px = divmod(int(k), w)
        y = int(np.clip(py - self.rng.integers(0, self.size), 0, h - self.size))
        x = int(np.clip(px - self.rng.integers(0, self.size), 0, w - self.size))
        return y, x

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(0, len(self.images), n)
        h, w = self.images.shape[1:3]
        ims = np.empty((n, self.size, self.size, 3), np.uint8)
        ms = np.empty((n, self.size, self.size), np.uint8)
        for j, i in enumerate(idx):
            if len(self.positives) and self.rng.random() < (self.positive_share or 0.0):
                i = int(self.rng.choice(self.positives))
                y, x = self._origin(i, h, w)
            else:
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
    """A node's discriminator, its optimiser and its feedback recipe (``FeedbackConfig``, the node's own)."""

    def __init__(self, cfg: ModelConfig, feedback: FeedbackConfig | None = None, seed: int | None = 0,
                 device: str = "cpu", precision: str = "fp32") -> None:
        """``seed=None`` draws D's initial weights from the OS: nobody else can compute them (a node's default).
        ``precision``: fp32, bf16 (autocast) or auto (bf16 on CUDA or a CPU with native bf16)."""
        self.cfg = cfg
        self.feedback = feedback or FeedbackConfig()
        self.device = torch.device(device)
        if precision not in values(Precision):
            raise ValueError(f"precision must be one of {', '.join(values(Precision))}, got {precision!r}")
        self.precision = resolve_precision(precision, device)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
        torch.manual_seed(seed)
        self._rounding = np.random.default_rng(seed)  # int8 gradients: the stochastic rounding's draws
        self.segmenting = self.feedback.mode == FeedbackMode.SEGMENTATION
        self.D: torch.nn.Module = define_seg_D(cfg) if self.segmenting else define_D(cfg)
        self.D.to(self.device)
        self.opt = torch.optim.Adam(self.D.parameters(), lr=self.feedback.lr, betas=(self.feedback.beta1, 0.999))
        self.gan_loss = GANLoss(cfg.gan_mode)
        # Semantic mode: a segmenter of the node's real pairs; its verdict on the fakes is part of G's loss.
        self.task: torch.nn.Module | None = None
        self.task_loss = float("nan")  # the semantic segmenter's last loss on real pairs (node stats only)
        self._task_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.feedback.mode == FeedbackMode.SEMANTIC:
            self.task = define_task_segmenter(cfg).to(self.device)
            self.task_opt = torch.optim.Adam(self.task.parameters(), lr=TASK_LR)
        self.colour_stats: torch.Tensor | None = None  # --lambda-colour: the node's dataset, see set_colour_stats
        self.mix_rng = torch.Generator(device=self.device).manual_seed(seed)
        self.aug_rng = torch.Generator(device=self.device).manual_seed(seed)
        self.steps = 0

    def set_colour_stats(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Each class's colour mean and spread over all of this node's pairs: what ``lambda_colour`` compares the
        fakes with (uint8 images (N, H, W, 3), masks (N, H, W)). With the term off, no pass over the data."""
        if self.feedback.lambda_colour:
            self.colour_stats = class_colour_stats(images, masks, self.cfg.num_classes).to(self.device)

    def _with_colour(self, losses: dict[str, Any], g_total: torch.Tensor, mask_t: torch.Tensor,
                     fake: torch.Tensor) -> torch.Tensor:
        if not self.feedback.lambda_colour:
            return g_total
        if self.colour_stats is None:
            raise RuntimeError("lambda_colour needs the node's colour statistics: call set_colour_stats first")
        g_colour = class_colour_loss(fake, class_labels(mask_t, self.cfg.num_classes), self.colour_stats)
        losses["g_colour"] = g_colour
        return g_total + self.feedback.lambda_colour * g_colour

    @property
    def warmup_steps(self) -> int:
        """Steps :meth:`warm_up` wants before the first feedback (segmentation and semantic modes)."""
        return self.feedback.warmup if self.segmenting or self.task is not None else 0

    def _on_device(self, arr: np.ndarray) -> torch.Tensor:
        """A batch from a node's sampler or the wire, as a tensor on D's device (no copy where it is contiguous)."""
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

    def warm_up(self, masks: np.ndarray, reals: np.ndarray) -> float:
        """One step of the segmenting D (or the semantic mode's segmenter) on real pairs alone: nothing is sent.

        A segmenter that already tells building from ground gives the generator a label-alignment signal from
        its first feedback; one that starts from scratch spends the first hundreds of steps at chance.
        """
        labels = class_labels(self._on_device(masks), self.cfg.num_classes)
        real = images_to_tensor(self._on_device(reals))
        if self.task is not None:
            return float(self._task_step(real, labels))
        self.D.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = class_balanced_ce(self.D(real), labels, self.cfg.num_classes, real=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def score(self, masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray,
              grad_dtype: str = "float32", more_reals: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Scored:
        """One D step on reals vs these fakes, then G's loss on the same fakes and d(loss)/d(fakes).

        ``more_reals``: (masks, reals) batches for further D steps against the same fakes, before the one on
        ``reals`` (``FeedbackConfig.d_steps``). With several nodes in turn each D steps once per N generator
        steps, all of which move the fakes it judges; more steps per feedback let it keep up."""
        dev = self.device
        if len(more_reals) != self.feedback.d_steps - 1:  # the recipe says how many: no caller may skip them
            raise ValueError(f"this node's D steps {self.feedback.d_steps} times per feedback: it needs "
                             f"{self.feedback.d_steps - 1} further real batch(es), got {len(more_reals)}")
        mask_t = self._on_device(masks)
        real = images_to_tensor(self._on_device(reals))
        fake = fakes_from_wire(fakes, dev)
        self.D.train()
        if more_reals:  # fresh real pairs (with their own masks) against the same fakes
            m_fake = masks_to_input(mask_t, self.cfg.num_classes)
            for more_masks, more in more_reals:
                self._patch_d_step(masks_to_input(self._on_device(more_masks), self.cfg.num_classes),
                                   images_to_tensor(self._on_device(more)), m_fake, fake)
        if self.segmenting:
            losses, g_total = self._segmentation_losses(mask_t, real, fake)
        else:
            losses, g_total = self._patch_losses(mask_t, real, fake)
        self.steps += 1
        (grad,) = torch.autograd.grad(g_total, fake)
        if self._task_batch is not None:  # semantic: learn from this batch's real pairs only now (kept local)
            self.task_loss = float(self._task_step(*self._task_batch))
            self._task_batch = None
        scale = float(grad.numel())
        peak = float(grad.abs().max()) * scale
        if grad_dtype == "float16" and peak > F16_SAFE:  # keep the scaled gradient finite in float16
            scale *= F16_SAFE / peak
        scaled = (grad * scale).cpu().numpy()
        if grad_dtype == "int8":
            q, steps = quantize_int8(scaled, self._rounding)
            return Scored(q, losses, scale, steps)
        return Scored(scaled.astype(grad_dtype, copy=False), losses, scale)

    def _autocast(self) -> torch.autocast:
        """bf16 autocast when this node runs in bf16; a no-op context otherwise."""
        return precision_autocast(self.device, self.precision)

    def _generator_loss(self, fn: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """G's loss with D (or ``model``) frozen (pix2pix order: after the D step)."""
        frozen = model if model is not None else self.D
        for p in frozen.parameters():
            p.requires_grad_(False)
        try:
            return fn()
        finally:
            for p in frozen.parameters():
                p.requires_grad_(True)

    def _task_step(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step of the semantic mode's segmenter on real pairs only: it never learns from a fake."""
        if self.task is None:
            raise RuntimeError("only a semantic-mode node has a task segmenter")
        self.task.train()
        self.task_opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = class_weighted_ce(self.task(real), labels, self.cfg.num_classes)
        loss.backward()
        self.task_opt.step()
        return loss.detach()

    def _judge(self, m: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The PatchGAN's logits, on DiffAugment'ed pairs when the node asks for it (gradients flow through)."""
        if self.feedback.diffaugment:
            m, image = diff_augment(m, image, generator=self.aug_rng)
        return self.D(m, image)

    def _patch_d_step(self, m_real: torch.Tensor, real: torch.Tensor, m_fake: torch.Tensor,
                      fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One PatchGAN D step: (m_real, real) pairs as real, (m_fake, fake) as fake."""
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():  # forward passes only: backward runs outside autocast, as PyTorch advises
            d_real = self.gan_loss(self._judge(m_real, real), True)
            d_fake = self.gan_loss(self._judge(m_fake, fake), False)
        ((d_real + d_fake) * 0.5).backward()
        self.opt.step()
        return d_real, d_fake

    def _patch_losses(self, mask_t: torch.Tensor, real: torch.Tensor,
                      fake: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        m = masks_to_input(mask_t, self.cfg.num_classes)
        d_real, d_fake = self._patch_d_step(m, real, m, fake)
        fake.requires_grad_(True)
        with self._autocast():
            g_adv = self._generator_loss(lambda: self.gan_loss(self._judge(m, fake), True))
        losses = {"d_real": d_real, "d_fake": d_fake, "g_adv": g_adv}
        g_total = g_adv
        if self.feedback.mode == FeedbackMode.L1:  # the only mode with a pixel loss against the real image
            g_l1 = torch.nn.functional.l1_loss(fake, real)
            g_total = g_adv + self.feedback.lambda_l1 * g_l1
            losses["g_l1"] = g_l1
        if self.task is not None:  # semantic: does a segmenter of this node's real pairs find the mask in the fake?
            task, c = self.task, self.cfg.num_classes
            labels = class_labels(mask_t, c)
            task.eval()
            # The verdict comes from the segmenter as it was before this batch: one that had just stepped on
            # these very real images would tie the gradient to them (sign agreement 0.513 when it did).
            with self._autocast():
                g_sem = self._generator_loss(lambda: class_weighted_ce(task(fake), labels, c), task)
            g_total = g_total + self.feedback.lambda_semantic * g_sem
            losses["g_semantic"] = g_sem
            self._task_batch = (real, labels)  # its step on them comes after the gradient (see score)
        g_total = self._with_colour(losses, g_total, mask_t, fake)
        losses["g_total"] = g_total
        return {k: float(v.detach()) for k, v in losses.items()}, g_total

    def _segmentation_losses(self, mask_t: torch.Tensor, real: torch.Tensor,
                             fake: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        c = self.cfg.num_classes
        labels = class_labels(mask_t, c)
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():  # forward passes only
            out_real, out_fake = self.D(real), self.D(fake)
            d_real = class_balanced_ce(out_real, labels, c, real=True)
            d_fake = class_balanced_ce(out_fake, labels, c, real=False)
            d_total = d_real + d_fake
            losses = {"d_real": d_real, "d_fake": d_fake}
            if self.feedback.label_mix > 0:
                mixed, mix = label_mix(labels, real, fake, c, self.mix_rng)
                lm = torch.nn.functional.mse_loss(self.D(mixed), mix * out_real + (1 - mix) * out_fake)
                d_total = d_total + self.feedback.label_mix * lm
                losses["d_labelmix"] = lm
        d_total.backward()
        self.opt.step()
        fake.requires_grad_(True)
        with self._autocast():
            g_adv = self._generator_loss(lambda: class_balanced_ce(self.D(fake), labels, c, real=True))
        losses["g_adv"] = g_adv
        g_total = self._with_colour(losses, g_adv, mask_t, fake)
        losses["g_total"] = g_total
        return {k: float(v.detach()) for k, v in losses.items()}, g_total
