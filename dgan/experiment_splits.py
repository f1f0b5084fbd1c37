"""The experiment's data side: which pairs are train, validation and test, which node holds which, and
what a cached result depends on.  Kept apart from the training so that a split can be built and checked
(``dgan experiment`` fails on a bad ``--test`` before any GAN trains) without the rest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dgan.data.loaders import PairSet, load_pairs_folder
from dgan.data.partition import partition
from dgan.data.scenes import CLASSES as SCENE_CLASSES
from dgan.data.scenes import make_scenes
from dgan.provenance import data_note, loaded_note, stale_data
from dgan.run import HELDOUT_SEED_BASE

if TYPE_CHECKING:
    from dgan.experiment_config import ExperimentConfig

log = logging.getLogger("dgan.experiment")

# The Dubai protocol: tile 8 is the test set; nodes hold whole tiles (any manifest column works the same way).
DUBAI_TEST = "tile=8"
DUBAI_GROUPS = [["7"], ["2", "4"], ["5"], ["1", "3", "6"]]

class ExperimentSetupError(ValueError):
    """The experiment cannot run as asked (a split that does not exist, a setting out of range)."""


def parse_test(spec: str) -> tuple[str, set[str]]:
    """``"tile=8"`` or ``"city=paris,berlin"`` -> (column, values)."""
    column, sep, values = spec.partition("=")
    vals = {v.strip() for v in values.split(",") if v.strip()}
    if not sep or not column.strip() or not vals:
        raise ExperimentSetupError(f"--test must be COLUMN=VALUE[,VALUE...], got {spec!r}")
    return column.strip(), vals


def parse_groups(spec: str) -> list[list[str]]:
    """``"7|2,4|5|1,3,6"`` -> one list of group values per node."""
    nodes = [[g.strip() for g in part.split(",") if g.strip()] for part in spec.split("|")]
    if not all(nodes):
        raise ExperimentSetupError(f"--groups must be values per node, nodes split by '|' and values by ',', "
                                   f"got {spec!r}")
    return nodes


@dataclass(frozen=True)  # frozen: the digests are computed once, so the pairs must not change under them
class Splits:
    train: PairSet
    val: PairSet
    test: PairSet
    node_parts: list[list[int]]  # indices into train
    description: dict[str, Any]

    @functools.cached_property
    def digest(self) -> str:
        """What a segmentation result was made from: pixels, masks and names of train, validation and test (0.15 s
        for Dubai at 128 px). Cache keys name the data by this digest (:func:`cache_keys`); a result found under an
        older key, which named the data by its path, is made again where its pixels changed
        (:func:`dgan.provenance.stale_data`), never silently reused."""
        return _digest((self.train, self.val, self.test))

    @functools.cached_property
    def train_digest(self) -> str:
        """What a GAN training was made from: the training pairs alone (a changed test mask retrains no GAN)."""
        return _digest((self.train,))


def _digest(parts: tuple[PairSet, ...]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(json.dumps(part.names).encode())
        for arr in (part.images, part.masks):
            arr = np.ascontiguousarray(arr)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.data)
    return h.hexdigest()


def from_cache(path: Path) -> dict[str, Any]:
    """A cached method's result; a GAN method's trainings did not run this time, so all count as loaded."""
    result = json.loads(path.read_text())
    result.setdefault("made_by", None)  # cached before the code was recorded (dgan.provenance)
    if "gan_seconds" in result:
        result["gan_reused"] = [True] * len(result["gan_seconds"])
    return result


def cached_result(paths: list[Path], splits: Splits, label: str) -> dict[str, Any] | None:
    """:func:`from_cache` of the first of ``paths`` (:func:`cache_keys`' files) that can be read and was made from
    these pixels (:func:`stale_under_key`), or None where there is none; a file passed over is logged. One found
    under an older key whose digest was checked is stored under the digest's key too, so it no longer depends on
    the path."""
    for index, path in enumerate(paths):
        if not path.exists():
            continue
        try:
            result = from_cache(path)
        except (OSError, ValueError, AttributeError) as exc:  # a broken file is made again, not a stopped run
            log.warning("%s: %s cannot be read (%s: %s); passed over", label, path, type(exc).__name__, exc)
            continue
        stale = stale_under_key(index, result.get("data_digest"), splits.digest)
        if stale:
            log.warning("%s: %s is not reused: %s", label, path, stale)
            continue
        log.info("%s: from cache %s, %s; %s", label, path, loaded_note(result["made_by"]),
                 data_note(result.get("data_digest")))
        if index > 0 and result.get("data_digest") is not None:
            try:
                paths[0].write_bytes(path.read_bytes())
            except OSError as exc:
                log.warning("%s: could not store it under its digest's key too (%s)", label, exc)
        return result
    return None


# A record from before data digests were kept is reused only under the first two keys of :func:`cache_keys`: the
# digest's (never without one) and the path exactly as typed, as the command that stored it spelled it. Under another
# spelling of that path, relative to another working directory it may have named other data: the digest must agree.
UNCHECKED_KEYS = 2


def stale_under_key(index: int, recorded: Any, digest: str) -> str:
    """Why a record found under the ``index``-th key must not stand for data with ``digest`` ("" when it may)."""
    if recorded is None and index >= UNCHECKED_KEYS:
        return "made before data digests were kept, and stored under another spelling of the data's path"
    return stale_data(recorded, digest)


def make_splits(cfg: ExperimentConfig) -> Splits:
    if cfg.data is None:
        n = cfg.scenes
        v, classes = cfg.scene_variant, SCENE_CLASSES[cfg.scene_variant]
        ims, ms = make_scenes(range(n), cfg.size, v)
        train = PairSet(ims, ms, [f"s{i}" for i in range(n)], {"group": [str(i % 8) for i in range(n)]}, classes)
        vi, vm = make_scenes(range(20_000_000, 20_000_000 + max(16, n // 8)), cfg.size, v)
        ti, tm = make_scenes(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + max(32, n // 4)), cfg.size, v)
        val = PairSet(vi, vm, [f"v{i}" for i in range(len(vi))], {}, classes)
        test = PairSet(ti, tm, [f"t{i}" for i in range(len(ti))], {}, classes)
        how = cfg.partition if cfg.partition != "group" else "dirichlet"
        parts = partition(len(train), cfg.nodes, how, seed=0, stat=[float((m > 0).mean()) for m in ms])
        desc = {"dataset": f"scenes ({v})", "train": "seeds 0..", "val": "seeds 20M..",
                "test": f"seeds {HELDOUT_SEED_BASE}.."}
        return Splits(train, val, test, parts, {**desc, "partition": how})
    pairs = load_pairs_folder(cfg.data, cfg.size)
    column, test_values = parse_test(cfg.test)
    if column not in pairs.columns:
        raise ExperimentSetupError(f"{cfg.data}/manifest.csv has no column {column!r} to split by (columns: "
                                   f"{', '.join(sorted(pairs.columns)) or 'none'})")
    labels = pairs.columns[column]
    missing = sorted(test_values - set(labels))
    if missing:
        raise ExperimentSetupError(f"{column} {missing[0]!r} is not in {cfg.data}/manifest.csv ({column} values: "
                                   f"{', '.join(sorted(set(labels)))})")
    test_idx = [i for i, t in enumerate(labels) if t in test_values]
    pool = [i for i, t in enumerate(labels) if t not in test_values]
    # Validation: whole source images (not single patches) from the training tiles, 15% of them.
    sources = sorted({pairs.columns.get("source_image", pairs.names)[i] for i in pool})
    rng = np.random.default_rng(0)
    val_sources = set(rng.choice(sources, max(1, len(sources) * 15 // 100), replace=False).tolist())
    src = pairs.columns.get("source_image", pairs.names)
    val_idx = [i for i in pool if src[i] in val_sources]
    train_idx = [i for i in pool if src[i] not in val_sources]
    if cfg.quick:
        train_idx = sorted(np.random.default_rng(1).choice(train_idx, min(len(train_idx), 160), replace=False))
        val_idx, test_idx = val_idx[:48], test_idx[:64]
    train = pairs.subset(train_idx)
    if cfg.partition == "group":
        groups = parse_groups(cfg.groups) if cfg.groups else (
            DUBAI_GROUPS if cfg.nodes == 4 and cfg.test == DUBAI_TEST else None)
        try:
            parts = partition(len(train), cfg.nodes, "group", groups=train.columns[column], node_groups=groups)
        except ValueError as exc:
            raise ExperimentSetupError(f"group partition by {column}: {exc}") from None
    else:
        parts = partition(len(train), cfg.nodes, cfg.partition, seed=0,
                          stat=[float((m > 0).mean()) for m in train.masks])
    desc = {"dataset": str(cfg.data), "test": cfg.test, "val": f"{len(val_sources)} source images of the "
            "training groups", "partition": cfg.partition, "group_column": column,
            "node_tiles": [sorted(set(train.columns[column][i] for i in p)) for p in parts]}
    return Splits(train, pairs.subset(val_idx), pairs.subset(test_idx), parts, desc)


def _recipe_key(cfg: ExperimentConfig, mode: str) -> dict[str, Any]:
    """The feedback recipe, less the settings that do not apply to this mode or sit at a default added later."""
    recipe = cfg.recipe(mode).to_dict()
    if recipe["mode"] != "semantic":
        recipe.pop("lambda_semantic")
    if not recipe["diffaugment"]:
        recipe.pop("diffaugment")
    if not recipe["lambda_colour"]:
        recipe.pop("lambda_colour")
    if recipe["d_steps"] == 1:  # the nodes' own setting (ExperimentConfig.node_recipe): never the central GAN's
        recipe.pop("d_steps")
    return recipe


def _arithmetic_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """The GANs' precision (``auto`` as resolved here) and memory layout, only where not the default: keys made
    before these settings existed stay valid."""
    key: dict[str, Any] = {}
    if cfg.gan_precision != "fp32":
        key["gan_precision"] = cfg.gan_precision
    if cfg.channels_last:
        key["channels_last"] = True
    return key


def _data_names(cfg: ExperimentConfig, digest: str) -> list[str]:
    """The data's name in a cache key, newest first: the digest of its pixels, so that a result is found whatever
    path the data is reached by (and wherever it was moved); then the names older keys held: the path as typed,
    and its other spellings (absolute, resolved, relative; see :data:`UNCHECKED_KEYS`)."""
    if cfg.data is None:
        return [f"digest:{digest}", "None"]
    absolute = [os.path.abspath(cfg.data), str(Path(cfg.data).resolve())]  # the second: symlinks followed
    spellings = [str(cfg.data), *absolute]
    for where in absolute:
        with contextlib.suppress(ValueError):  # another drive (Windows): there is no relative spelling
            spellings.append(os.path.relpath(where))
    return [f"digest:{digest}", *dict.fromkeys(spellings)]


def _hashes(key: dict[str, Any], names: list[str]) -> list[str]:
    return [hashlib.sha1(json.dumps({**key, "data": n}, sort_keys=True).encode()).hexdigest()[:16] for n in names]


def cache_key(cfg: ExperimentConfig, splits: Splits, method: str, mode: str = "") -> str:
    """The key a method's result is stored under (:func:`cache_keys`' first)."""
    return cache_keys(cfg, splits, method, mode)[0]


def cache_keys(cfg: ExperimentConfig, splits: Splits, method: str, mode: str = "") -> list[str]:
    """What the method's result depends on: data, splits and segmentation always; the GAN only for GAN methods.
    The keys to look under, newest first: one per name of the data (:func:`_data_names`)."""
    real = method in ("real_all", "real_partial")
    # settings added later keep older keys while at their default
    seg = {k: v for k, v in cfg.seg_config("real" if real else "synthetic").to_dict().items()
           if (k, v) not in (("num_classes", 2), ("positive_share", 0.0), ("recolour", 0.0))}
    key: dict[str, Any] = {"method": method, "size": cfg.size, "seg": seg,
                           "seeds": cfg.seeds, "train": splits.train.names, "val": splits.val.names,
                           "test": splits.test.names}
    if cfg.data is None and cfg.scene_variant != "buildings":  # keys from before variants existed stay valid
        key["scenes"] = cfg.scene_variant
    if cfg.device != "cpu":  # the same recipe, other arithmetic: a GPU's results are cached apart (any GPU alike)
        key["device"] = "cuda"
    if len(splits.train.classes) > 2:  # a classes.json added to a folder changes every result
        key["classes"] = list(splits.train.classes)
    if method == "real_partial":
        key["nodes"] = [[splits.train.names[i] for i in p] for p in splits.node_parts]
    if not real:
        key.update(gan_steps=cfg.gan_steps, batch=cfg.batch_size, model=cfg.model().to_dict(),
                   gan_seeds=cfg.gan_seeds, samples=cfg.samples_per_mask, feedback=_recipe_key(cfg, mode))
        if cfg.oasis_optim:
            key["g_optim"] = cfg.generator_optim()
        if cfg.ema:  # only when on: results cached before EMA existed keep their keys
            key["ema"] = cfg.ema
        if cfg.snapshots:  # the count, the cadence (from the central GAN's steps), and the last weights beside
            key["snapshots"] = {**cfg.snapshot_args(cfg.gan_steps), "beside": "last,ema" if cfg.ema else "last"}
        key.update(_arithmetic_key(cfg))
    return _hashes(key, _data_names(cfg, splits.digest))


def gan_training_key(cfg: ExperimentConfig, splits: Splits, mode: str) -> str:
    """The key a central GAN training is saved under (:func:`gan_training_keys`' first)."""
    return gan_training_keys(cfg, splits, mode)[0]


def gan_training_keys(cfg: ExperimentConfig, splits: Splits, mode: str) -> list[str]:
    """What a central GAN training depends on: not the segmenters' settings nor their seed count, so a rerun that
    changes only how its sets are scored loads the trained generators. Newest first, as :func:`cache_keys`, with
    the digest of the training pairs alone."""
    key: dict[str, Any] = {"method": "central_gan", "scenes": cfg.scene_variant,
                           "size": cfg.size, "train": splits.train.names, "classes": list(splits.train.classes),
                           "gan_steps": cfg.gan_steps, "batch": cfg.batch_size, "model": cfg.model().to_dict(),
                           "feedback": _recipe_key(cfg, mode), "g_optim": cfg.generator_optim(), "ema": cfg.ema,
                           "snapshots": cfg.snapshot_args(cfg.gan_steps), "positive_share": cfg.seg.positive_share,
                           "device": "cpu" if cfg.device == "cpu" else "cuda", **_arithmetic_key(cfg)}
    return _hashes(key, _data_names(cfg, splits.train_digest))
