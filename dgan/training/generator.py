"""The central generator's learning: make fakes, apply nodes' gradients later.

Fakes are made by a forward pass through a *snapshot* of G's parameters (one
per generator step), and the autograd graph is kept until that request's
feedback arrives.  Feedback then backpropagates the node's gradient through
the exact computation that made those fakes, even when G has stepped since
(delayed-gradient SGD, with the staleness tracked and bounded).  With
staleness 0 this is exactly a pix2pix G step.

``jacobian="current"`` is a delay compensation: the fakes are made without a
graph, and the feedback is backpropagated through G's *current* weights, run
again on the same masks with the same dropout draw.  Only the node's view of
the fakes is then stale, not the step direction through G.  (With batch norm,
which dgan's G does not use by default, the replay also updates its running
statistics a second time.)
"""

from __future__ import annotations

import copy
import enum
import functools
import logging
import random
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from dgan import grad_codec
from dgan.choices import FakeDtype, Jacobian, Precision, StalePolicy, SynthWeights, TrainMode, Weighting, values
from dgan.cpu_features import device_problem, precision_autocast, resolve_precision, rng_devices
from dgan.networks import ModelConfig, define_G, masks_to_input, tensor_to_images
from dgan.training.checkpoints import load_checkpoint, numpy_rng_state, save_atomic, set_numpy_rng_state
from dgan.training.snapshots import WeightSnapshots
from dgan.training.staleness import drop_reason, stale_weight

log = logging.getLogger("dgan.generator")


TRAIN_MODES = values(TrainMode)
WEIGHTINGS = values(Weighting)
FAKE_DTYPES = values(FakeDtype)
SYNTH_WEIGHTS = values(SynthWeights)
PRECISIONS = values(Precision)
JACOBIANS = values(Jacobian)
STALE_POLICIES = values(StalePolicy)


@dataclass
class TrainConfig:
    steps: int = 300
    lr: float = 2e-4
    beta1: float = 0.5
    mode: str = "async"  # "async" or "sync" (AsynDGAN/FedML-style rounds)
    update_every: int = 1  # async: feedbacks per optimizer step (0: one per node; -1: by staleness, RoundPolicy)
    weighting: str = "size"  # "size" (by node dataset size) or "equal"
    max_staleness: int = 8
    stale_policy: str = "drop"  # past max_staleness: drop, or apply discounted (dgan.training.staleness)
    max_inflight_per_node: int = 4
    max_batch: int = 64
    fake_dtype: str = "float16"
    ema: float = 0.0  # > 0: keep an exponential moving average of G's weights (decay) and synthesise from it
    snapshots: int = 0  # > 0: keep G's weights every snapshot_every steps, the last this many (weights "snapshots")
    snapshot_every: int = 100
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # G's forward: fp32, bf16 (autocast) or auto (bf16 where the CPU has it natively)
    channels_last: bool = False  # G's weights and inputs in NHWC (0.93-1.01x on a 2-core VM: off)
    compile: bool = False  # torch.compile G's forward (0.79x there, after ~35 s of compiling: off)
    jacobian: str = "made"  # backprop a feedback through the weights that made its fakes, or G's current ones

    def __post_init__(self) -> None:
        for name, allowed in (("mode", TRAIN_MODES), ("weighting", WEIGHTINGS), ("fake_dtype", FAKE_DTYPES),
                              ("precision", PRECISIONS), ("jacobian", JACOBIANS),
                              ("stale_policy", STALE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"TrainConfig.ema is a decay in [0, 1), got {self.ema!r}")
        if self.snapshots < 0 or self.snapshots == 1 or self.snapshot_every < 1:
            raise ValueError(f"TrainConfig.snapshots must be >= 0 and not 1 (one is the last weights), and "
                             f"snapshot_every >= 1; got {self.snapshots} and {self.snapshot_every}")
        if self.jacobian == "current" and self.compile:  # the replay must draw the dropout the fakes drew
            raise ValueError("TrainConfig.jacobian 'current' runs G again at feedback time with the fakes' dropout "
                             "draw; a compiled forward does not promise the same draw with and without gradients, "
                             "so it is refused with compile")
        if self.max_staleness < 0:
            raise ValueError(f"TrainConfig.max_staleness must be >= 0, got {self.max_staleness}")
        if self.update_every < -1:
            raise ValueError(f"TrainConfig.update_every must be >= 0 (0: one per node) or -1 (by staleness), got "
                             f"{self.update_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(enum.Enum):
    APPLIED = "applied"
    DISCOUNTED = "discounted"  # applied, at a weight cut for staleness past the bound (stale_policy discount)
    DROPPED_STALE = "dropped_stale"
    UNKNOWN = "unknown"  # no such request in flight (released, duplicate, or never made)
    REJECTED = "rejected"  # wrong shape, dtype or non-finite values


@dataclass
class InFlight:
    node: str
    step_made: int
    fakes: torch.Tensor  # carries the graph back to ``params`` (jacobian "current": no graph)
    params: list[torch.Tensor]
    created: float = field(default_factory=time.monotonic)
    inputs: torch.Tensor | None = None  # jacobian "current": G's input and dropout seed, to run it again
    seed: int = 0


class GeneratorTrainer:
    def __init__(self, model: ModelConfig, train: TrainConfig) -> None:
        self.model_cfg, self.cfg = model, train
        self.device = torch.device(train.device)
        torch.manual_seed(train.seed)
        self.G = define_G(model).to(self.device)
        self._format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.G = self.G.to(memory_format=self._format)
        self.precision = resolve_precision(train.precision, train.device)
        if self.precision != train.precision:  # checkpoints record what ran: a replay elsewhere runs the same
            log.info("precision %s resolves to %s on this machine", train.precision, self.precision)
            self.cfg = replace(train, precision=self.precision)
        # dynamic=None: a second batch size recompiles once with a dynamic batch dimension, not once per size
        self._compiled = torch.compile(self._eager_forward, dynamic=None) if train.compile else None
        self._forward = self._compiled_forward if train.compile else self._eager_forward
        self.G.train()  # dropout is the generator's noise, at training and synthesis alike
        self.opt = torch.optim.Adam(self.G.parameters(), lr=train.lr, betas=(train.beta1, 0.999))
        self.G_ema = copy.deepcopy(self.G) if train.ema > 0 else None
        self.snaps = WeightSnapshots(train.snapshots, train.snapshot_every, last=train.steps)
        self.judged: tuple[int, dict[str, torch.Tensor]] | None = None  # (step, G) where the nodes' judges peaked
        self.judged_score: float | None = None
        self.watch_bests: dict[str, list[float]] = {}  # the judges' watches' (best, step), kept for --resume
        self._judged_G: torch.nn.Module | None = None  # built from ``judged`` once, when first synthesised from
        self.names = [n for n, _ in self.G.named_parameters()]
        self.step = 0
        self.inflight: dict[int, InFlight] = {}
        self._params_at: tuple[int, list[torch.Tensor]] | None = None
        self._acc: list[torch.Tensor] | None = None
        self.pending = 0  # feedbacks accumulated since the last step
        self.samples_applied = 0

    # ------------------------------------------------------------ fakes

    def _params_now(self) -> list[torch.Tensor]:
        if self._params_at is None or self._params_at[0] != self.step:
            snap = [p.detach().clone().requires_grad_(True) for p in self.G.parameters()]
            self._params_at = (self.step, snap)
        return self._params_at[1]

    def request_seed(self, node: str, request_id: int) -> int:
        """Dropout seed of one request, from what the message log records (node name, request id),
        so a generator rebuilt from the log draws the same noise."""
        return (self.cfg.seed * 1_000_003 + zlib.crc32(node.encode()) * 2**32 + request_id) % (2**62)

    def generate(self, node: str, key: int, masks: np.ndarray, request_id: int = 0) -> np.ndarray:
        """Fakes for ``masks`` (B, H, W); remembered under ``key`` until feedback."""
        m = torch.from_numpy(np.array(masks, dtype=np.uint8))  # small copy: wire frames are read-only
        x = masks_to_input(m.to(self.device), self.model_cfg.num_classes).contiguous(memory_format=self._format)
        seed = self.request_seed(node, request_id)
        if self.cfg.jacobian == "current":  # no graph: the feedback runs G again at the weights it has then
            with torch.no_grad():
                fakes = self._run(list(self.G.parameters()), x, seed)
            self.inflight[key] = InFlight(node, self.step, fakes, [], inputs=x, seed=seed)
        else:
            params = self._params_now()
            fakes = self._run(params, x, seed)
            self.inflight[key] = InFlight(node, self.step, fakes, params)
        return fakes_to_wire(fakes.detach().cpu(), self.cfg.fake_dtype)

    def _run(self, params: list[torch.Tensor], x: torch.Tensor, seed: int) -> torch.Tensor:
        """G on ``x`` with ``params`` (in ``self.names`` order) and the dropout draw of ``seed``; the global RNG is
        left as it was."""
        with torch.random.fork_rng(devices=rng_devices(self.device)), precision_autocast(self.device, self.precision):
            torch.manual_seed(seed)
            return self._forward(dict(zip(self.names, params, strict=True)), x).float()

    def _eager_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.G, params, (x,))

    def _compiled_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The compiled forward; where compiling fails (no C++ toolchain, an unsupported op) G runs on eagerly."""
        if self._compiled is None:
            return self._eager_forward(params, x)
        try:
            return self._compiled(params, x)
        except Exception as exc:  # torch raises many types from its compiler stack
            log.warning("torch.compile failed (%s: %s); the generator runs uncompiled", type(exc).__name__, exc)
            self._forward = self._eager_forward
            return self._eager_forward(params, x)

    def release(self, node: str) -> int:
        """Forget a node's in-flight requests (it left or restarted)."""
        keys = [k for k, f in self.inflight.items() if f.node == node]
        for k in keys:
            del self.inflight[k]
        return len(keys)

    def release_key(self, key: int) -> bool:
        return self.inflight.pop(key, None) is not None

    def inflight_for(self, node: str) -> int:
        return sum(1 for f in self.inflight.values() if f.node == node)

    def evict_oldest(self, node: str) -> int | None:
        """Drop a node's oldest request in flight (it has evidently moved on); returns its key."""
        keys = [k for k, f in self.inflight.items() if f.node == node]
        if not keys:
            return None
        oldest = min(keys, key=lambda k: self.inflight[k].created)
        del self.inflight[oldest]
        return oldest

    # ------------------------------------------------------------ feedback

    def stale_factor(self, step_made: int) -> tuple[int, float | None, str]:
        """A feedback on fakes made at ``step_made``: its staleness, the factor it counts for (None: drop it, for
        the reason given), by :mod:`dgan.training.staleness`."""
        staleness = self.step - step_made
        factor = stale_weight(staleness, self.cfg.max_staleness, self.cfg.stale_policy)
        return staleness, factor, "" if factor is not None else drop_reason(staleness, self.cfg.max_staleness,
                                                                            self.cfg.stale_policy)

    def apply_feedback(self, node: str, key: int, grad: np.ndarray, grad_scale: float = 1.0,
                       weight: float = 1.0, grad_scales: np.ndarray | None = None) -> tuple[Outcome, int, str]:
        """Backpropagate a node's d(loss)/d(fakes); returns (outcome, staleness, reason).

        ``grad_scales``: an int8 gradient's per-sample steps (:mod:`dgan.grad_codec`).
        """
        inf = self.inflight.get(key)
        if inf is None or inf.node != node:
            return Outcome.UNKNOWN, -1, f"no request {key} from {node} is in flight"
        if tuple(grad.shape) != tuple(inf.fakes.shape):
            del self.inflight[key]
            return Outcome.REJECTED, -1, f"gradient shape {list(grad.shape)} != fakes {list(inf.fakes.shape)}"
        if not (np.isfinite(grad_scale) and grad_scale > 0):
            del self.inflight[key]
            return Outcome.REJECTED, -1, f"grad_scale {grad_scale!r} must be finite and positive"
        try:
            grad = grad_codec.decode(grad, grad_scales)
        except ValueError as exc:
            del self.inflight[key]
            return Outcome.REJECTED, -1, str(exc)
        g = torch.tensor(grad, dtype=torch.float32, device=self.device)
        if not torch.isfinite(g).all():
            del self.inflight[key]
            return Outcome.REJECTED, -1, "gradient holds NaN or Inf"
        del self.inflight[key]
        staleness, factor, reason = self.stale_factor(inf.step_made)
        if factor is None:
            return Outcome.DROPPED_STALE, staleness, reason
        weight *= factor
        if inf.inputs is not None:  # jacobian "current": the same masks and dropout draw through G as it is now
            params = list(self.G.parameters())
            fakes = self._run(params, inf.inputs, inf.seed)
        else:
            fakes, params = inf.fakes, inf.params
        grads = torch.autograd.grad(fakes, params, grad_outputs=g * (weight / grad_scale))
        if self._acc is None:
            self._acc = list(grads)
        else:
            for a, b in zip(self._acc, grads, strict=True):
                a.add_(b)
        self.pending += 1
        self.samples_applied += int(inf.fakes.shape[0])
        return (Outcome.APPLIED, staleness, "") if factor == 1.0 else \
            (Outcome.DISCOUNTED, staleness, f"weight x{factor:.3f} for staleness {staleness}")

    def update(self) -> bool:
        """One optimizer step with the mean of the accumulated gradients."""
        if self._acc is None or self.pending == 0:
            return False
        for p, a in zip(self.G.parameters(), self._acc, strict=True):
            p.grad = a.div_(self.pending)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._acc, self.pending = None, 0
        self.step += 1
        self._update_ema()
        self.snaps.after_step(self.step, self.G)
        return True

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Average of G's recent weights; the decay ramps up (``(1 + t) / (10 + t)``) so a short run's
        average is not dominated by the random initial weights."""
        if self.G_ema is None:
            return
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            e.copy_(b)

    # ------------------------------------------------------------ synthesis

    def keep_judged(self, score: float | None = None) -> None:
        """Remember G's weights now: the nodes' transfer judges just gave their best verdict of the run."""
        self.judged_score = score
        if self.judged is not None and self.judged[0] == self.step:
            return  # G has not stepped since: the copy kept is these weights
        self.judged = (self.step, {k: v.detach().clone() for k, v in self.G.state_dict().items()})
        self._judged_G = None

    def weights_available(self, which: str) -> str:
        """What ``which`` resolves to: ``auto`` is snapshots, ema or raw, the first kept; missing judged weights
        fall back as ``auto`` does, missing snapshots or ema to ema or raw."""
        if which == "judged" and self.judged is not None:
            return "judged"
        if which in ("snapshots", "auto", "judged") and self.snaps.available(self.step, self.G):
            return "snapshots"
        if which in ("auto", "ema", "judged", "snapshots"):
            return "ema" if self.G_ema is not None else "raw"
        return "raw"

    def weights(self, which: str = "auto") -> torch.nn.Module:
        """The generator to synthesise with: ``raw`` (the last weights), ``ema`` (their moving average),
        ``judged`` (where the nodes' judges peaked) or ``auto`` (snapshots, ema or raw). For ``snapshots``, the
        latest of them (:meth:`synthesize` spreads a set over all)."""
        if which not in SYNTH_WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(SYNTH_WEIGHTS)}, got {which!r}")
        which = self.weights_available(which)
        if which == "judged" and self.judged is not None:
            if self._judged_G is None:  # one copy of G however many node sets or samples are synthesised
                self._judged_G = copy.deepcopy(self.G)
                self._judged_G.load_state_dict(self.judged[1])
            return self._judged_G
        return self.G_ema if which == "ema" and self.G_ema is not None else self.G

    @torch.no_grad()
    def synthesize(self, masks: np.ndarray, batch: int = 32, seed: int = 12345, weights: str = "auto",
                   draw: int = 0) -> np.ndarray:
        """uint8 images (N, H, W, 3) for label maps (N, H, W), dropout on as at training; ``weights``: see
        :meth:`weights`. With ``snapshots``, mask i comes from snapshot (i + draw) mod K, so K draws of a set
        give every mask once from each."""
        if self.weights_available(weights) == "snapshots":
            models = [functools.partial(functional_call, self.G, w) for _, w in self.snaps.members(self.step, self.G)]
        else:
            models = [self.weights(weights)]  # which also refuses an unknown name
        out = np.empty((*masks.shape, 3), np.uint8)
        with torch.random.fork_rng(devices=rng_devices(self.device)):
            torch.manual_seed(seed)
            for j, model in enumerate(models):
                idx = np.flatnonzero((np.arange(len(masks)) + draw) % len(models) == j)
                for i in range(0, len(idx), batch):
                    m = torch.from_numpy(np.ascontiguousarray(masks[idx[i:i + batch]])).to(self.device)
                    out[idx[i:i + batch]] = tensor_to_images(model(masks_to_input(m, self.model_cfg.num_classes))).cpu()
        return out

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        ema = {"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {}
        if self.judged is not None:
            ema.update(G_judged=self.judged[1], judged_step=self.judged[0], judged_score=self.judged_score,
                       judged_by="transfer_iou")
        ema.update(self.snaps.state())
        if self.watch_bests:
            ema["watch_bests"] = {k: [float(v) for v in b] for k, b in self.watch_bests.items()}
        return {"G": self.G.state_dict(), **ema, "opt": self.opt.state_dict(), "step": self.step,
                "samples_applied": self.samples_applied, "model": self.model_cfg.to_dict(),
                "train": self.cfg.to_dict(), "threads": torch.get_num_threads(),  # for a bitwise rebuild
                "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()}}

    def save(self, path: Path) -> None:
        save_atomic(self.state(), path)

    def load(self, path: Path) -> None:
        self.restore(load_checkpoint(path))

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | None = None) -> GeneratorTrainer:
        """A trainer built with a checkpoint's own model and training config, then restored from it: on ``device``,
        else where it trained, else (a GPU checkpoint on a machine without that GPU) on the CPU."""
        known = {f.name for f in fields(TrainConfig)}  # a newer checkpoint's extra settings are not ours to know
        train = TrainConfig(**{k: v for k, v in state["train"].items() if k in known})
        if device is None and (problem := device_problem(train.device)) is not None:
            log.warning("%s: this checkpoint loads on the cpu", problem)
            device = "cpu"
        if device is not None:
            train = replace(train, device=device)
        trainer = cls(ModelConfig.from_dict(state["model"]), train)
        trainer.restore(state)
        return trainer

    def restore(self, state: dict[str, Any]) -> None:
        mine = self.cfg.to_dict()  # a resume with other settings goes on with these ones: say which differ
        changed = sorted(k for k, v in state.get("train", {}).items() if k in mine and k not in ("device", "steps")
                         and mine[k] != v)
        if changed:
            log.warning("the checkpoint was trained with other settings (%s); training goes on with this run's",
                        ", ".join(f"{k} {state['train'][k]!r} -> {mine[k]!r}" for k in changed))
        self.G.load_state_dict(state["G"])
        if self.G_ema is not None:  # a checkpoint from before EMA was on starts the average from its weights
            self.G_ema.load_state_dict(state.get("G_ema", state["G"]))
        # Judged weights from before session 14 were chosen by label_iou, which ranked the sets backwards: dropped.
        by_transfer = "G_judged" in state and state.get("judged_by") == "transfer_iou"
        self.judged = (int(state["judged_step"]), state["G_judged"]) if by_transfer else None
        self._judged_G = None
        self.judged_score = state.get("judged_score") if by_transfer else None
        self.watch_bests = dict(state.get("watch_bests", {}))
        self.snaps.restore(state, self.device)
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.samples_applied = int(state.get("samples_applied", 0))
        torch.set_rng_state(state["rng"]["torch"])
        set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.inflight.clear()
        self._params_at, self._acc, self.pending = None, None, 0


def fakes_to_wire(fakes: torch.Tensor, dtype: str) -> np.ndarray:
    """Fakes in [-1, 1] as the wire dtype; uint8 is 256 levels over [-1, 1] (the node maps q to q / 127.5 - 1)."""
    if dtype == "uint8":
        return ((fakes.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return fakes.numpy().astype(dtype, copy=False)
