"""The experiment's central GAN: one discriminator on the pooled pairs, and its trained generators kept on disk.

A central GAN's training depends on the data and the GAN's settings, not on how its sets are scored, so a rerun
that changes the segmenters or their seed count loads its generators instead of training them again."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgan.data.loaders import PairSet
from dgan.experiment_config import ExperimentConfig
from dgan.experiment_splits import Splits, gan_training_keys, stale_under_key
from dgan.progress import ProgressLog
from dgan.provenance import code_version, data_note, loaded_note
from dgan.training.checkpoints import load_checkpoint, save_atomic
from dgan.training.discriminator import DiscriminatorTrainer, PairSampler
from dgan.training.generator import GeneratorTrainer, TrainConfig

log = logging.getLogger("dgan.experiment")


@dataclass
class TrainedGAN:
    """A GAN method's trained generator, the wall seconds its training took, and whether this experiment loaded
    it from an earlier one instead of training it."""

    generator: GeneratorTrainer
    seconds: float
    reused: bool = False
    made_by: Any = None  # a reused training: the code that made it (dgan.provenance), None where not recorded


def central_gan(cfg: ExperimentConfig, train: PairSet, seed: int, mode: str) -> GeneratorTrainer:
    """One discriminator on the pooled pairs: the same G, D, loss, batch and images seen as DGAN."""
    model = cfg.model()
    lr, beta1 = cfg.generator_optim()
    gen = GeneratorTrainer(model, TrainConfig(steps=cfg.gan_steps, lr=lr, beta1=beta1, seed=seed, fake_dtype="float32",
                                              ema=cfg.ema, device=cfg.device, precision=cfg.gan_precision,
                                              channels_last=cfg.channels_last, **cfg.snapshot_args(cfg.gan_steps)))
    disc = DiscriminatorTrainer(model, cfg.recipe(mode), seed=seed, device=cfg.device, precision=cfg.gan_precision)
    disc.set_colour_stats(train.images, train.masks)  # the pooled pairs' figures, with --lambda-colour
    sampler = PairSampler(train.images, train.masks, cfg.size, seed=seed, positive_share=cfg.seg.positive_share or None)
    for _ in range(disc.warmup_steps):  # as a node does before its first feedback
        reals, masks = sampler.batch(cfg.batch_size)
        disc.warm_up(masks, reals)
    progress = ProgressLog(f"central_gan {mode} seed {seed}", cfg.gan_steps)
    for step in range(cfg.gan_steps):
        reals, masks = sampler.batch(cfg.batch_size)
        fakes = gen.generate("central", step, masks, request_id=step)
        scored = disc.score(masks, reals, fakes, "float32")
        gen.apply_feedback("central", step, scored.grad, scored.grad_scale)
        gen.update()
        progress.update(step + 1)
    progress.finish(cfg.gan_steps)
    return gen


def central_gan_paths(cfg: ExperimentConfig, splits: Splits, seed: int, mode: str, cache: Path) -> list[Path]:
    """Where this training is saved (the first) and where older keys may hold it (:func:`gan_training_keys`)."""
    return [cache / f"central_gan-G-{k}-seed{seed}.pt" for k in gan_training_keys(cfg, splits, mode)]


def central_gan_path(cfg: ExperimentConfig, splits: Splits, seed: int, mode: str, cache: Path) -> Path:
    return central_gan_paths(cfg, splits, seed, mode, cache)[0]


def central_gan_trained(cfg: ExperimentConfig, splits: Splits, seed: int, mode: str, cache: Path) -> TrainedGAN:
    """The central GAN of this seed: loaded from ``cache`` where a training with the same settings finished, else
    trained and saved there (under the newest key). A file that cannot be read, or that holds another model, seed
    or step count, or was trained on other pixels (its data digest), is passed over; a save that fails is logged,
    and the trained generator is used all the same.

    The key leaves out the thread count and the code's version, as the experiment's other caches do: after
    changing the training code, delete the cache's ``central_gan-G-*`` files. Each file records the code that
    trained it (``made_by``), and loading one logs it."""
    paths = central_gan_paths(cfg, splits, seed, mode, cache)
    for index, path in enumerate(paths):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            recorded = state.get("data_digest")
            mismatch = _mismatch(state, cfg, seed) or stale_under_key(index, recorded, splits.train_digest)
            if mismatch:
                raise ValueError(mismatch)
            gen = GeneratorTrainer.from_state(state, device=cfg.device)
            seconds = float(state.get("train_seconds", 0.0))
            log.info("central_gan %s seed %d: loaded the finished training %s (%.0f s when it ran), %s; %s", mode,
                     seed, path, seconds, loaded_note(state.get("made_by")), data_note(recorded))
            if index > 0 and recorded is not None:  # checked: under the digest's key too (a link, not a copy)
                _link(path, paths[0])
            return TrainedGAN(gen, seconds, reused=True, made_by=state.get("made_by"))
        except Exception as exc:  # whatever the file holds, the experiment trains instead of stopping
            log.warning("central_gan %s seed %d: %s cannot be used (%s: %s); passed over", mode, seed, path,
                        type(exc).__name__, exc)
    path = paths[0]
    t = time.time()
    gen = central_gan(cfg, splits.train, seed, mode)
    seconds = time.time() - t
    try:
        save_atomic({**gen.state(), "train_seconds": seconds, "made_by": code_version(),
                     "data_digest": splits.train_digest}, path)
    except OSError as exc:  # a full or read-only disk must not throw away a finished training
        log.warning("central_gan %s seed %d: could not keep the training in %s (%s); a rerun will train it again",
                    mode, seed, path, exc)
    return TrainedGAN(gen, seconds)


def _link(found: Path, newest: Path) -> None:
    """``newest`` names the file ``found`` too (replacing one that could not be used); where the file system cannot
    link, the older key alone keeps it."""
    linked = newest.with_name(newest.name + ".link")
    try:
        linked.unlink(missing_ok=True)
        linked.hardlink_to(found)
        linked.replace(newest)
    except OSError as exc:
        log.info("%s: not also stored as %s (%s)", found, newest, exc)


def _mismatch(state: dict[str, object], cfg: ExperimentConfig, seed: int) -> str:
    """Why a saved training is not the one this experiment asks for ("" when it is)."""
    train, model = state.get("train"), state.get("model")
    if not isinstance(train, dict) or not isinstance(model, dict):
        return "no training or model settings"
    if model != cfg.model().to_dict():
        return "another model"
    if train.get("seed") != seed or train.get("steps") != cfg.gan_steps or state.get("step") != cfg.gan_steps:
        return f"seed {train.get('seed')}, {state.get('step')} of {train.get('steps')} steps"
    return ""
