"""`dgan experiment`: does segmentation trained on DGAN's synthetic images hold up?

Methods, all evaluated on the same real test split, read once at the end:

* ``real_all``: segmentation on every node's real training pairs pooled (needs data sharing);
* ``real_partial``: segmentation on each single node's real pairs (per node, and the mean);
* ``central_gan``: one pix2pix on the pooled pairs, synthesise every training mask, segment;
* ``dgan``: the distributed run (broker + N node processes), synthesise, segment;
* ``dgan_sync`` (``--with-sync``): the same in AsynDGAN's synchronous mode;
* ``dgan_local``: each department's segmenter on DGAN's set plus its own pairs (yardsticks: ``central_local``,
  with ``--local-from central_gan``, from the central GAN's set; ``real_local``, with ``--local-from real_all``,
  from the pooled real pairs).

Both GANs use the same feedback mode (``dgan.feedback``), so the comparison is like for like;
with several modes, each extra one adds ``central_gan_MODE`` and ``dgan_MODE``.

Model selection uses a validation split carved from the training tiles, never the test tiles.
``real_all`` and ``central_gan`` do not depend on the partition and are cached by data, config and seed;
the central GAN's generators are kept apart from their scores (``dgan.experiment_central``).
Both GANs synthesise from 4 snapshots of G by default (``--snapshots 0``: from the last weights, or the EMA);
``NAME_last`` measures the same trainings' sets from their last weights, ``NAME_ema`` (with ``--ema``) from
their moving average, and ``NAME_judged`` (``--judged``) from where the nodes' judges peaked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgan.choices import MIXING_HOWS, LocalFrom, LocalHow
from dgan.cpu_features import deterministic_cuda
from dgan.data.loaders import PairSet
from dgan.data.partition import summary
from dgan.experiment_central import TrainedGAN, central_gan, central_gan_trained  # noqa: F401  (re-exported)
from dgan.experiment_config import LOCAL_NAMES, ExperimentConfig  # also re-exported: the experiment's public names
from dgan.experiment_splits import (  # noqa: F401  (re-exported: the experiment's public names)
    DUBAI_GROUPS,
    DUBAI_TEST,
    ExperimentSetupError,
    Splits,
    cache_key,
    cache_keys,
    cached_result,
    from_cache,
    make_splits,
    parse_groups,
    parse_test,
)
from dgan.experiment_tables import claims, markdown
from dgan.finished_runs import finished_run, forget_finished, record_finished
from dgan.progress import DGANProgress
from dgan.provenance import code_version, data_note, describe, loaded_note
from dgan.run import RunConfig, run_local
from dgan.segment import (
    SegConfig,
    class_metrics,
    pair_grid,
    predict_labels,
    prediction_grid,
    synthetic_stage,
    train_local,
    train_segmenter,
)
from dgan.training.checkpoints import load_checkpoint
from dgan.training.generator import GeneratorTrainer

log = logging.getLogger("dgan.experiment")

METRICS = ("iou", "f1", "precision", "recall", "accuracy")


# ------------------------------------------------------------------ GANs


ALSO_LABELS = {"raw": "last", "ema": "ema", "judged": "judged"}  # a GAN method's other weights, as the method names end


def synthesize_set(gen: GeneratorTrainer, masks: np.ndarray, samples_per_mask: int, weights: str = "auto",
                   classes: tuple[str, ...] = ("background", "building")) -> PairSet:
    """Several samples per mask: dropout makes each one different."""
    ims = [gen.synthesize(masks, seed=1000 + k, weights=weights, draw=k) for k in range(samples_per_mask)]
    all_masks = np.concatenate([masks] * samples_per_mask)
    return PairSet(np.concatenate(ims), all_masks, [f"syn{i}" for i in range(len(all_masks))], {}, classes)


def dgan_launch(cfg: ExperimentConfig, splits: Splits, mode: str, seed: int, feedback: str) -> RunConfig:
    """The DGAN run's processes and settings for one GAN seed (what ``dgan_run`` starts)."""
    recipe = cfg.node_recipe(feedback, sync=mode == "sync")
    d_steps = f"_d{recipe.d_steps}" if recipe.d_steps > 1 else ""
    out = cfg.out / f"dgan_{mode}_{feedback}{cfg.arithmetic_suffix}{d_steps}_seed{seed}"  # other settings: apart
    lr, beta1 = cfg.generator_optim()
    if mode == "async" and cfg.async_beta1 is not None:
        beta1 = cfg.async_beta1
    if cfg.data is None:
        shards = [{"kind": "scenes", "seeds": [int(i) for i in p], "size": cfg.size, "variant": cfg.scene_variant}
                  for p in splits.node_parts]
    else:
        shards = [{"kind": "folder", "path": str(cfg.data.resolve()), "names": [splits.train.names[i] for i in p]}
                  for p in splits.node_parts]
    # The same budget as the central GAN: gan_steps batches of feedback, whatever a generator step averages.
    steps = cfg.generator_steps(cfg.gan_steps, mode, cfg.update_every)
    return RunConfig(nodes=cfg.nodes, steps=steps, out=out, image_size=cfg.size, g_width=cfg.g_width,
                     d_width=cfg.d_width, batch_size=cfg.batch_size, mode=mode, seed=seed, shards=shards,
                     synthesize=False, checkpoint_every=0, sample_every=max(1, steps // 4),
                     timeout=4 * 3600, feedback=feedback, lambda_l1=cfg.lambda_l1, device=cfg.device,
                     num_classes=cfg.num_classes, pipeline=cfg.pipeline, precision=cfg.gan_precision,
                     channels_last=cfg.channels_last,
                     extra_generator_args=["--lr", str(lr), "--beta1", str(beta1), "--ema", str(cfg.ema),
                                           "--synthesis-weights", "judged" if cfg.judged else "auto",
                                           "--update-every", str(cfg.update_every),
                                           "--fake-dtype", cfg.fake_dtype,
                                           # only when not the default: finished runs keep their fingerprints
                                           *(("--weighting", cfg.weighting) if cfg.weighting != "size" else ()),
                                           *(f"--{k.replace('_', '-')}={v}"
                                             for k, v in cfg.snapshot_args(steps).items())],
                     node_args=["--label-mix", str(recipe.label_mix), "--lambda-semantic",
                                str(recipe.lambda_semantic), "--lambda-colour", str(recipe.lambda_colour),
                                "--d-lr", str(recipe.lr),
                                "--d-beta1", str(recipe.beta1), "--d-warmup", str(recipe.warmup),
                                "--positive-crops", str(cfg.seg.positive_share), "--grad-dtype", cfg.grad_dtype,
                                "--diffaugment" if recipe.diffaugment else "--no-diffaugment",
                                "--d-steps", str(recipe.d_steps)])  # always: the nodes' default is not 1


def dgan_run(cfg: ExperimentConfig, splits: Splits, mode: str, seed: int, feedback: str) -> TrainedGAN:
    """One DGAN training. One that already finished in its folder with the same settings is loaded, not run
    again, so an experiment can be rerun for more seeds, methods or department models; a changed setting, or a
    training that never finished, trains afresh."""
    run = dgan_launch(cfg, splits, mode, seed, feedback)
    done = finished_run(run, splits.train_digest)
    if done is not None:
        log.info("dgan %s seed %d: reusing the finished training in %s (%.0f s when it ran), %s; %s", feedback, seed,
                 run.out, done["train_seconds"], loaded_note(done.get("made_by")), data_note(done.get("data_digest")))
        seconds = float(done["train_seconds"])
    else:
        forget_finished(run)
        t = time.time()
        progress = DGANProgress(f"dgan{'' if mode == 'async' else '_' + mode} {feedback} seed {seed}", run.steps)
        try:
            progress.finish(run_local(run, progress.watch).get("steps"))
        finally:
            progress.close()
        seconds = time.time() - t
        record_finished(run, seconds, splits.train_digest)
    gen = GeneratorTrainer.from_state(load_checkpoint(run.out / "checkpoints" / "latest.pt"))
    return TrainedGAN(gen, seconds, reused=done is not None, made_by=done.get("made_by") if done else None)


# ------------------------------------------------------------------ segmentation


def evaluate_training_set(cfg: ExperimentConfig, train: PairSet, splits: Splits, seed: int,
                          grid: Path | None = None, label: str = "", own: PairSet | None = None,
                          how: str = "pretrain", synthetic: bool = False,
                          pretrained: tuple[torch.nn.Module, dict[str, Any]] | None = None,
                          pooled: bool = False) -> dict[str, Any]:
    """Train a segmenter on ``train`` (``synthetic``: a GAN's set; plus a department's ``own`` real pairs, ``how``,
    from its first stage ``pretrained`` where given), test it once. ``pooled``: ``train`` is the pooled real pairs
    (the ``real_local`` yardstick), jittered as real pairs and already holding ``own``."""
    source = "real" if pooled else "local" if own is not None else "synthetic" if synthetic else "real"
    seg = segmenter_config(cfg, splits, seed, source)
    val = (splits.val.images, splits.val.masks)
    log.info("%s seed %d: segmentation on %d pairs%s", label, seed, len(train),
             f" and {len(own)} own real pairs ({how})" if own is not None else "")
    if own is None:
        model, info = train_segmenter(train.images, train.masks, seg, val=val)
    else:
        model, info = train_local((train.images, train.masks), (own.images, own.masks), seg, val=val, how=how,
                                  real_share=cfg.local_share, real_photometric=cfg.seg.photometric,
                                  pretrained=pretrained)
    pred = predict_labels(model, splits.test.images, seg.num_classes, device=seg.device)
    result = {**class_metrics(pred, splits.test.masks, splits.test.classes), "train_seconds": info["train_seconds"],
              "best_step": info["best_step"], "best_val_iou": info["best_val_iou"],
              "train_pairs": len(train) + (len(own) if own is not None and not pooled else 0),
              **({"synthetic_stage_only": info["synthetic_stage_only"]} if "synthetic_stage_only" in info else {})}
    if grid is not None:
        prediction_grid(splits.test.images, splits.test.masks, pred, grid)
    log.info("%s seed %d: test IoU %.3f, best validation IoU %.3f (%.0f s)", label, seed, result["iou"],
             result["best_val_iou"], result["train_seconds"])
    return result


Stage = tuple[torch.nn.Module, dict[str, Any]]


def department_models(cfg: ExperimentConfig, splits: Splits, sets: list[PairSet], seeds: list[int],
                      how: str, name: str = "dgan_local",
                      shared: dict[tuple[int, bool], Stage] | None = None,
                      pooled: bool = False) -> dict[str, dict[str, Any]]:
    """``name`` (dgan_local): each department's segmenters, seed s on GAN set s mod len(sets) plus its own pairs.
    The first stage is the same for every department: it trains once per seed, on first use, and each
    department starts from it (on the CPU, the same weights as training it each time: seeded; a GPU's kernels may
    differ a little). ``shared``: the stages already trained from these very ``sets`` (a dict for one list of
    sets only), by (seed, half the steps), which another recipe reuses (pretrain's and replay's are the same).
    ``pooled``: ``sets`` is the pooled real pairs (``real_local``): jittered as real pairs, no GAN seed."""
    val = (splits.val.images, splits.val.masks)
    shared = {} if shared is None else shared

    def stage(s: int) -> Stage | None:
        if how == LocalHow.mixed.value:
            return None
        key = (s, how == LocalHow.finetune.value)
        if key not in shared:
            log.info("%s seed %d: the first stage, shared by the departments", name, s)
            train = sets[s % len(sets)]
            first = segmenter_config(cfg, splits, s, "real" if pooled else "local")
            shared[key] = synthetic_stage((train.images, train.masks), first, val, how)
        return shared[key]

    return {f"node{k}": _aggregate([{**evaluate_training_set(
        cfg, sets[s % len(sets)], splits, s, None, f"{name} node{k}", splits.train.subset(part), how,
        pretrained=stage(s), pooled=pooled), **({} if pooled else {"gan_seed": s % len(sets)})} for s in seeds])
        for k, part in enumerate(splits.node_parts)}


def central_sets(cfg: ExperimentConfig, splits: Splits, cache: Path) -> tuple[list[PairSet], list[bool]]:
    """The central GAN's synthetic sets (first feedback mode) when its scores came from the cache, and whether each
    training was loaded: loaded from the cache too, they synthesise the sets those scores came from. One whose
    file is gone trains again (logged): on the CPU the same weights, seeded; elsewhere its set may differ."""
    sets, loaded = [], []
    for g in range(cfg.gan_trainings):
        trained = central_gan_trained(cfg, splits, g, cfg.feedback[0], cache)
        if not trained.reused:
            log.warning("central_gan seed %d: its scores came from the cache but its training did not (%s); it "
                        "trained again for the department models", g, cache)
        sets.append(synthesize_set(trained.generator, splits.train.masks, cfg.samples_per_mask,
                                   classes=splits.train.classes))
        loaded.append(trained.reused)
    return sets, loaded


def segmenter_config(cfg: ExperimentConfig, splits: Splits, seed: int, source: str) -> SegConfig:
    """One segmentation training's settings at this seed: the experiment's, for ``source`` (ExperimentConfig's
    ``seg_config``) images."""
    return replace(cfg.seg_config(source), seed=seed, num_classes=len(splits.test.classes), device=cfg.device)


def _node_mean(per_node: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The departments' mean of each metric (per-class IoUs and mIoU too, where there are more classes)."""
    first = next(iter(per_node.values()))
    keys = [k for k in first if k in METRICS or k == "miou" or (k.startswith("iou_") and k != "iou_per_image"
                                                                  and not k.endswith("_std"))]
    return {k: float(np.mean([v[k] for v in per_node.values()])) for k in keys}


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": runs}
    per_class = [k for k in runs[0] if k == "miou" or (k.startswith("iou_") and k != "iou_per_image")]
    for k in (*METRICS, "iou_per_image", "train_seconds", *per_class):
        vals = [r[k] for r in runs]
        out[k] = float(np.mean(vals))
        out[f"{k}_std"] = float(np.std(vals))
    return out


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    if cfg.device != "cpu":
        deterministic_cuda()
    cfg.out.mkdir(parents=True, exist_ok=True)
    cache = cfg.cache or cfg.out.parent / "experiment-cache"
    cache.mkdir(parents=True, exist_ok=True)
    # read now, once per process (every later record reuses it): a checkout changed during the run is not its code
    log.info("code: %s", describe(code_version()))
    splits = make_splits(cfg)
    cfg = replace(cfg, num_classes=len(splits.train.classes))
    log.info("splits: train %d, val %d, test %d; nodes %s", len(splits.train), len(splits.val), len(splits.test),
             [len(p) for p in splits.node_parts])
    seeds = list(range(cfg.seeds))
    if (note := cfg.single_scored_sets()) is not None:
        log.warning("%s", note)
    methods: dict[str, Any] = {}
    grids = cfg.out / "predictions"
    t0 = time.time()

    def cached(method: str, compute: Any, mode: str = "") -> dict[str, Any]:
        paths = [cache / f"{method}-{k}.json" for k in cache_keys(cfg, splits, method, mode)]
        result = cached_result(paths, splits, method)
        if result is not None:
            return result
        result = {**compute(), "made_by": code_version(), "data_digest": splits.digest}  # code: read at the start
        paths[0].write_text(json.dumps(result))
        return result

    methods["real_all"] = cached("real_all", lambda: _aggregate([
        evaluate_training_set(cfg, splits.train, splits, s, grids / "real_all.png" if s == 0 else None, "real_all")
        for s in seeds]))
    def partial() -> dict[str, Any]:
        per_node = {f"node{k}": _aggregate([evaluate_training_set(
            cfg, splits.train.subset(part), splits, s, grids / f"real_node{k}.png" if s == 0 else None,
            f"real_partial node{k}") for s in seeds]) for k, part in enumerate(splits.node_parts)}
        return {**_node_mean(per_node), "per_node": per_node}

    methods["real_partial"] = cached("real_partial", partial)

    synthetic: dict[str, list[PairSet]] = {}  # each GAN method's synthetic sets, one per GAN seed

    def evaluate_sets(name: str, sets: list[PairSet]) -> dict[str, Any]:
        return _aggregate([{**evaluate_training_set(cfg, sets[s % len(sets)], splits, s,
                                                    grids / f"{name}.png" if s == 0 else None, name, synthetic=True),
                            "gan_seed": s % len(sets)} for s in seeds])

    def gan_method(name: str, make: Callable[[int], GeneratorTrainer | TrainedGAN],
                   also: tuple[str, ...] = ()) -> dict[str, Any]:
        """``also``: the same trainings' sets from other weights, each measured as ``NAME_LABEL`` (ALSO_LABELS)."""
        sets, gan_seconds, gan_reused, weights, gan_made_by = synthetic.setdefault(name, []), [], [], [], []
        other: dict[str, list[PairSet]] = {w: [] for w in also}
        judged_steps: list[int | None] = []
        for g in range(cfg.gan_trainings):
            log.info("%s GAN seed %d: %d batches", name, g, cfg.gan_steps)
            t = time.time()
            made = make(g)
            trained = made if isinstance(made, TrainedGAN) else TrainedGAN(made, time.time() - t)
            gen = trained.generator
            gan_seconds.append(trained.seconds)
            gan_reused.append(trained.reused)
            gan_made_by.append(trained.made_by if trained.reused else code_version())
            weights.append(gen.weights_available("auto"))  # and with snapshots, their steps
            if weights[-1] == "snapshots":
                weights[-1] += " " + ",".join(str(s) for s, _ in gen.snaps.members(gen.step, gen.G))
            sets.append(synthesize_set(gen, splits.train.masks, cfg.samples_per_mask, classes=splits.train.classes))
            pair_grid(sets[-1].images, sets[-1].masks, grids / f"{name}_synthetic_gan{g}.png")
            for w in also:  # judged, with no transfer_iou window yet: the weights `auto` gives, as the generator does
                other[w].append(synthesize_set(gen, splits.train.masks, cfg.samples_per_mask, w, splits.train.classes))
            judged_steps.append(gen.judged[0] if gen.judged is not None else None)
        alternates = {ALSO_LABELS[w]: {**evaluate_sets(f"{name}_{ALSO_LABELS[w]}", ws), "alternate_of": name,
                                       **({"judged_steps": judged_steps} if w == "judged" else {})}
                      for w, ws in other.items()}
        return {**evaluate_sets(name, sets), "gan_seconds": gan_seconds, "gan_reused": gan_reused,
                "gan_made_by": gan_made_by, "synthesis_weights": weights, "alternates": alternates}

    def add(name: str, result: dict[str, Any], fb: str) -> None:
        """A GAN method and the same trainings' sets from other weights, each a method of its own."""
        alternates = result.pop("alternates", {})
        methods[name] = {**result, "feedback": fb}
        for label, m in alternates.items():  # the same trainings: the same record of their code
            methods[f"{name}_{label}"] = {**m, "feedback": fb,
                                          **({"made_by": result["made_by"]} if "made_by" in result else {})}

    # beside the snapshots: what the last weights alone give, and with --ema what their moving average gives
    last = ("raw", *(("ema",) if cfg.ema else ())) if cfg.snapshots else ()
    for i, fb in enumerate(cfg.feedback):
        suffix = "" if i == 0 else f"_{fb}"
        central_paths = [cache / f"central_gan-{k}.json" for k in cache_keys(cfg, splits, "central_gan", fb)]
        if "central_gan" in cfg.gan_methods:
            add(f"central_gan{suffix}", cached("central_gan", lambda fb=fb, suffix=suffix: gan_method(
                f"central_gan{suffix}", lambda s: central_gan_trained(cfg, splits, s, fb, cache), last), fb), fb)
        elif (shown := cached_result(central_paths, splits, f"central_gan{suffix}")) is not None:
            add(f"central_gan{suffix}", shown, fb)  # not asked for, but already measured with these exact settings
        if "dgan" in cfg.gan_methods:
            add(f"dgan{suffix}", gan_method(f"dgan{suffix}", lambda s, fb=fb: dgan_run(cfg, splits, "async", s, fb),
                                            (*last, *(("judged",) if cfg.judged else ()))), fb)
    for source in cfg.local_from if cfg.local else ():
        sets, loaded = synthetic.get(source), None  # this run's sets; a central GAN scored from the cache: its own
        pooled = source == LocalFrom.real_all.value
        if pooled:
            sets = [splits.train]  # the pooled real pairs: what no department has, a yardstick
        if not sets and source == "central_gan" and "central_gan" in cfg.gan_methods and source in methods:
            sets, loaded = central_sets(cfg, splits, cache)
        if not sets:
            log.warning("no department models from %s: it was not among the GAN methods run", source)
            continue
        stages: dict[tuple[int, bool], Stage] = {}
        for j, how in enumerate(cfg.local):
            per_node = department_models(cfg, splits, sets, seeds, how, LOCAL_NAMES[source], stages, pooled)
            methods[LOCAL_NAMES[source] if j == 0 else f"{LOCAL_NAMES[source]}_{how}"] = {
                **_node_mean(per_node), "per_node": per_node, "how": how, "from": source,
                **({} if pooled else {"feedback": cfg.feedback[0]}),
                **({"local_share": cfg.local_share} if how in MIXING_HOWS else {}),
                **({"gan_loaded": loaded} if loaded is not None else {})}
    if cfg.with_sync:
        add("dgan_sync", gan_method("dgan_sync", lambda s: dgan_run(cfg, splits, "sync", s, cfg.feedback[0]), last),
            cfg.feedback[0])
    results = {
        "dataset": splits.description["dataset"], "partition": splits.description["partition"],
        "resolution": cfg.size, "splits": splits.description,
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "nodes": summary(splits.node_parts, splits.train.masks),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "gan_precision": cfg.gan_precision,  # --precision auto as it resolved on this machine
        "code": code_version(),
        "methods": methods, "wall_seconds": time.time() - t0, "feedback": list(cfg.feedback),
        "claims": claims(methods),
        **({"notes": [note]} if note is not None else {}),
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (cfg.out / "results.md").write_text(markdown(results))
    return results
