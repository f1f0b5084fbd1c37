"""Segmentation: a U-Net trained on any (image, mask) set, evaluated on real test data.

The same code trains on real pairs (the baselines) and on synthetic ones (the
GANs), so the comparison in `dgan experiment` differs only in the training set.
The model kept is the one with the best IoU on the validation set, never the test set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dgan.choices import LocalHow, values
from dgan.data.view import mask_rgb
from dgan.networks import UNetGenerator, images_to_tensor


@dataclass
class SegConfig:
    width: int = 16
    depth: int = 4
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    eval_every: int = 100
    seed: int = 0
    device: str = "cpu"
    standardize: bool = False  # per-image, per-channel standardisation inside the model
    photometric: float = 0.0  # strength of brightness/contrast/colour/blur jitter at training (0 = off)
    recolour: float = 0.0  # share of training images whose channels are shuffled, inverted or greyed (_recolour);
    # with ``mix``, of the main set's images only (a department's own real pairs keep their colours)
    num_classes: int = 2  # 2: one building logit (binary); C > 2: C logits, masks of class ids
    positive_share: float = 0.0  # sparse targets: share of each batch drawn from pairs that hold foreground

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Segmenter(nn.Module):
    """U-Net on images in [-1, 1]; optionally standardises each image first.

    Standardising per image removes the global brightness, contrast and colour cast that
    separate a GAN's images from real ones, which the segmenter should not have to learn."""

    def __init__(self, cfg: SegConfig) -> None:
        super().__init__()
        self.standardize = cfg.standardize
        outputs = 1 if cfg.num_classes == 2 else cfg.num_classes
        self.net = UNetGenerator(3, outputs, cfg.width, cfg.depth, dropout=0.0, norm="batch", final="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True)
            x = (x - mean) / (std + 0.05)
        return self.net(x)


def define_segmenter(cfg: SegConfig) -> nn.Module:
    return Segmenter(cfg)


def _augment(rng: np.random.Generator, ims: np.ndarray, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    ims, ms = np.rot90(ims, k, axes=(1, 2)), np.rot90(ms, k, axes=(1, 2))
    if rng.random() < 0.5:
        ims, ms = ims[:, :, ::-1], ms[:, :, ::-1]
    return np.ascontiguousarray(ims), np.ascontiguousarray(ms)


def _photometric(rng: np.random.Generator, x: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast, per-channel gain and blur per image, so appearance cues that
    differ between synthetic and real images cannot carry the segmentation."""
    if strength <= 0:
        return x
    n = x.shape[0]
    u = lambda *shape: torch.from_numpy(rng.uniform(-1, 1, (n, *shape)).astype(np.float32))  # noqa: E731
    x = x * (1 + strength * u(1, 1, 1)) * (1 + 0.5 * strength * u(3, 1, 1)) + 0.5 * strength * u(1, 1, 1)
    blur = torch.from_numpy(rng.random(n) < 0.5 * strength)
    if blur.any():
        x = torch.where(blur[:, None, None, None], nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
    return x.clamp(-1.5, 1.5)


def _recolour(rng: np.random.Generator, x: torch.Tensor, share: float) -> torch.Tensor:
    """Shuffle the channels of about ``share`` of the images, then invert half of those and grey a quarter, so
    that a GAN's early images (buildings where the masks say, in colours of its own) teach shapes, not colours."""
    if share <= 0:
        return x
    out = x.clone()
    for i in np.flatnonzero(rng.random(len(x)) < share):
        y = x[i, torch.from_numpy(rng.permutation(3))]
        if rng.random() < 0.5:
            y = -y
        if rng.random() < 0.25:
            y = y.mean(0, keepdim=True).expand_as(y)
        out[i] = y
    return out


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def multiclass_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the soft Dice of each foreground class: (B, C, H, W) logits, (B, H, W) class ids."""
    ce = nn.functional.cross_entropy(logits, labels)
    p = torch.softmax(logits, 1)[:, 1:]
    onehot = nn.functional.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(p.dtype)
    dims = (0, 2, 3)
    dice = 1 - (2 * (p * onehot).sum(dims) + 1) / (p.sum(dims) + onehot.sum(dims) + 1)
    return ce + dice.mean()


def _loss(model: nn.Module, x: torch.Tensor, masks: np.ndarray, num_classes: int, device: str) -> torch.Tensor:
    if num_classes == 2:
        return segmentation_loss(model(x), torch.from_numpy((masks > 0).astype(np.float32))[:, None].to(device))
    return multiclass_loss(model(x), torch.from_numpy(masks.astype(np.int64)).to(device))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch: int = 32, device: str = "cpu") -> np.ndarray:
    """Building probability per pixel, (N, H, W) float32."""
    model.eval()
    out = np.empty(images.shape[:3], np.float32)
    for i in range(0, len(images), batch):
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))).to(device)
        out[i:i + batch] = torch.sigmoid(model(x))[:, 0].cpu().numpy()
    return out


@torch.no_grad()
def predict_labels(model: nn.Module, images: np.ndarray, num_classes: int = 2, batch: int = 32,
                   device: str = "cpu") -> np.ndarray:
    """Class ids per pixel, (N, H, W) uint8: building probability > 0.5 for binary models, else the argmax."""
    if num_classes == 2:
        return (predict(model, images, batch, device) > 0.5).astype(np.uint8)
    model.eval()
    out = np.empty(images.shape[:3], np.uint8)
    for i in range(0, len(images), batch):
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))).to(device)
        out[i:i + batch] = model(x).argmax(1).cpu().numpy()
    return out


def class_metrics(pred: np.ndarray, truth: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Binary: :func:`metrics`.  More classes: ``iou_<class>`` for each, ``miou`` over all of them, and
    iou/f1/precision/recall/iou_per_image as the mean over the foreground classes (so tables read alike)."""
    if len(classes) <= 2:
        return metrics(pred > 0, truth > 0)
    per = [metrics(pred == c, truth == c) for c in range(len(classes))]
    seen = [bool(np.any(truth == c) or np.any(pred == c)) for c in range(len(classes))]  # absent: no score
    out = {f"iou_{name}": m["iou"] if s else float("nan") for name, m, s in zip(classes, per, seen, strict=True)}
    fg = [m for m, s in zip(per[1:], seen[1:], strict=True) if s]
    for k in ("iou", "f1", "precision", "recall", "iou_per_image"):
        out[k] = float(np.mean([m[k] for m in fg])) if fg else 1.0
    out["accuracy"] = float(np.mean(pred == truth))
    out["miou"] = float(np.mean([m["iou"] for m, s in zip(per, seen, strict=True) if s]))
    return out


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Building IoU, F1/Dice, precision, recall, pixel accuracy over all test pixels, plus per-image mean IoU."""
    p, t = pred.astype(bool), truth.astype(bool)
    tp = float(np.sum(p & t))
    fp = float(np.sum(p & ~t))
    fn = float(np.sum(~p & t))
    tn = float(np.sum(~p & ~t))
    union = (p | t).reshape(len(p), -1).sum(1)
    inter = (p & t).reshape(len(p), -1).sum(1)
    has = union > 0
    return {"iou": tp / max(tp + fp + fn, 1.0), "f1": 2 * tp / max(2 * tp + fp + fn, 1.0),
            "precision": tp / max(tp + fp, 1.0), "recall": tp / max(tp + fn, 1.0),
            "accuracy": (tp + tn) / max(tp + tn + fp + fn, 1.0),
            "iou_per_image": float(np.mean(inter[has] / union[has])) if has.any() else 1.0}


def train_segmenter(images: np.ndarray, masks: np.ndarray, cfg: SegConfig,
                    val: tuple[np.ndarray, np.ndarray] | None = None,
                    mix: tuple[np.ndarray, np.ndarray, float] | None = None,
                    init: dict[str, torch.Tensor] | None = None,
                    mix_photometric: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train; keep the weights with the best validation IoU (or the last, without validation).

    ``mix`` = (images, masks, share): that share of every batch comes from a second set (a department's
    own real pairs beside the synthetic ones), jittered at ``mix_photometric`` (None: as the rest);
    ``init``: start from these weights (fine-tuning)."""
    if len(images) == 0:
        raise ValueError("no training pairs")
    if mix is not None and (len(mix[0]) == 0 or not 0 < mix[2] < 1 or cfg.batch_size < 2):
        raise ValueError("mix needs pairs, a share between 0 and 1 and batches of 2 or more")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = define_segmenter(cfg).to(cfg.device)
    if init is not None:
        model.load_state_dict(init)
    n_mix = 0 if mix is None else min(cfg.batch_size - 1, max(1, round(cfg.batch_size * mix[2])))
    main = cfg.batch_size - n_mix  # each batch: the main set's images, then the mixed-in ones
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps))
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    history = []
    t0 = time.perf_counter()
    positives = np.flatnonzero(masks.reshape(len(masks), -1).any(1)) if cfg.positive_share > 0 else None
    for step in range(1, cfg.steps + 1):
        model.train()
        idx = rng.integers(0, len(images), cfg.batch_size - n_mix)
        if positives is not None and len(positives):  # the draws above stay as they were when this is off
            pick = rng.random(len(idx)) < cfg.positive_share
            idx[pick] = rng.choice(positives, int(pick.sum()))
        ims, ms = images[idx], masks[idx]
        if mix is not None:
            jdx = rng.integers(0, len(mix[0]), n_mix)
            ims, ms = np.concatenate([ims, mix[0][jdx]]), np.concatenate([ms, mix[1][jdx]])
        ims, ms = _augment(rng, ims, ms)
        x = images_to_tensor(torch.from_numpy(ims))
        if cfg.recolour > 0:
            x = torch.cat([_recolour(rng, x[:main], cfg.recolour), x[main:]])
        if mix_photometric is None or mix_photometric == cfg.photometric:
            x = _photometric(rng, x, cfg.photometric)
        else:  # the two sources' images sit where they were drawn: the flips and rotations move whole images
            x = torch.cat([_photometric(rng, x[:main], cfg.photometric), _photometric(rng, x[main:], mix_photometric)])
        # NHWC, as the images arrive: the U-Net trains about 1.9x faster so on this CPU, and recolouring a batch
        # with no mixed-in tail used to hand it over as NCHW (docs/results/demo.md, session 36)
        x = x.to(cfg.device).contiguous(memory_format=torch.channels_last)
        loss = _loss(model, x, ms, cfg.num_classes, cfg.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if val is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            pred = predict_labels(model, val[0], cfg.num_classes, device=cfg.device)
            iou = metrics(pred > 0, val[1] > 0)["iou"] if cfg.num_classes == 2 else float(np.mean(
                [metrics(pred == c, val[1] == c)["iou"] for c in range(1, cfg.num_classes)]))
            history.append({"step": step, "loss": float(loss.detach()), "val_iou": iou})
            if best is None or iou > best[0]:
                best = (iou, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
    if best is not None:
        model.load_state_dict(best[1])
    info = {"train_seconds": time.perf_counter() - t0, "history": history,
            "best_val_iou": best[0] if best else None, "best_step": best[2] if best else cfg.steps}
    return model, info


LOCAL_HOWS = values(LocalHow)


def synthetic_stage(synthetic: tuple[np.ndarray, np.ndarray], cfg: SegConfig,
                    val: tuple[np.ndarray, np.ndarray] | None = None,
                    how: str = "pretrain") -> tuple[nn.Module, dict[str, Any]]:
    """A department model's first stage, on the shared synthetic set alone: the same for every department, so an
    experiment trains it once per seed and hands it to each one's ``train_local``."""
    return train_segmenter(*synthetic, _stage(cfg, how), val=val)


def _stage(cfg: SegConfig, how: str) -> SegConfig:
    """Each of the two stages' settings: all the steps (pretrain, replay) or half of them (finetune)."""
    if how not in (LocalHow.finetune.value, LocalHow.pretrain.value, LocalHow.replay.value):
        raise ValueError(f"how must be one of {', '.join(LOCAL_HOWS)} (mixed has no stages), got {how!r}")
    return cfg if how != LocalHow.finetune.value else replace(cfg, steps=max(1, cfg.steps // 2))


def train_local(synthetic: tuple[np.ndarray, np.ndarray], real: tuple[np.ndarray, np.ndarray], cfg: SegConfig,
                val: tuple[np.ndarray, np.ndarray] | None = None, how: str = "pretrain",
                real_share: float = 0.5, real_photometric: float | None = None,
                pretrained: tuple[nn.Module, dict[str, Any]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A department's own model: the shared synthetic set plus its own real pairs, which never leave it.

    ``pretrain`` (default): all the steps on the synthetic set, then all of them again on the real pairs from those
    weights: twice the cost, and as many steps on the department's own pairs as a model of those alone gets.
    ``replay``: as pretrain, but the second stage's batches keep ``1 - real_share`` synthetic pairs, so the
    department's model does not forget the other departments' scenes while it fits its own (``positive_share``
    draws only the own pairs' share on foreground, as ``mixed`` does only the synthetic one).
    ``finetune``: half the steps on each; ``mixed``: every batch holds ``real_share`` real pairs. Both cost
    ``cfg.steps`` steps. ``cfg.photometric`` jitters the synthetic images, ``real_photometric`` (None: the same) the
    real ones. ``pretrained``: the synthetic stage's result (``synthetic_stage``), already trained, with its info;
    its seconds count all the same, as the department running it at home would spend them."""
    if len(real[0]) == 0:
        raise ValueError("a department model needs its own real pairs")
    if how == "mixed":
        return train_segmenter(*synthetic, cfg, val=val, mix=(*real, real_share), mix_photometric=real_photometric)
    stage = _stage(cfg, how)
    pre, info1 = synthetic_stage(synthetic, cfg, val, how) if pretrained is None else pretrained
    if real_photometric is not None:
        stage = replace(stage, photometric=real_photometric)
    replay = (*synthetic, 1.0 - real_share) if how == LocalHow.replay.value else None
    model, info2 = train_segmenter(*real, stage, val=val, init=pre.state_dict(), mix=replay,
                                   mix_photometric=cfg.photometric if replay else None)
    stage_only = val is not None and info1["best_val_iou"] > info2["best_val_iou"]  # fine-tuning did not help on val
    if stage_only:
        model, info2 = pre, {**info2, "best_val_iou": info1["best_val_iou"], "best_step": info1["best_step"]}
    return model, {**info2, "train_seconds": info1["train_seconds"] + info2["train_seconds"],
                   "synthetic_stage_only": stage_only}


def _most_buildings(masks: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n masks with the most building pixels: the grids worth looking at."""
    return np.argsort(-(masks > 0).reshape(len(masks), -1).sum(1), kind="stable")[:n]


def prediction_grid(images: np.ndarray, masks: np.ndarray, pred: np.ndarray, path: Path, n: int = 6) -> Path:
    """Rows of image | truth | prediction (class ids), for the n test images with the most foreground."""
    order = _most_buildings(masks, n)
    palette = bool(masks.max(initial=0) > 1 or pred.max(initial=0) > 1)
    rows = [np.concatenate([images[i], mask_rgb(masks[i], palette), mask_rgb(pred[i], palette)], axis=1)
            for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def pair_grid(images: np.ndarray, masks: np.ndarray, path: Path, n: int = 6) -> Path:
    """Rows of mask | image (e.g. a synthetic training set), for the n masks with the most buildings."""
    order = _most_buildings(masks, n)
    palette = bool(masks.max(initial=0) > 1)  # one colouring for the whole grid
    rows = [np.concatenate([mask_rgb(masks[i], palette), images[i]], axis=1) for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def save_model(model: nn.Module, cfg: SegConfig, path: Path) -> None:
    from dgan.training.checkpoints import save_atomic

    save_atomic({"state": model.state_dict(), "config": cfg.to_dict()}, path)


def load_model(path: Path) -> tuple[nn.Module, SegConfig]:
    from dgan.training.checkpoints import CheckpointError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = SegConfig(**{**state["config"], "device": "cpu"})  # it was loaded onto the CPU, whatever trained it
        model = define_segmenter(cfg)
        model.load_state_dict(state["state"])
    except Exception as exc:
        raise CheckpointError(f"segmentation model {path} cannot be loaded ({type(exc).__name__}: {exc})") from None
    return model, cfg
