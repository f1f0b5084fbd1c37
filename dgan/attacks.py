"""Reconstruction attacks by a curious generator: what a node's feedback gives away, as a number.

The generator sees the masks of every request, so it knows which private image
a feedback belongs to (up to the node's flips, which it undoes by matching the
mask).  From the sign of each returned gradient it infers ``sign(fake - real)``
per pixel, which is exact for the L1 term: ``d|fake - real|/d fake``.

* Passive (:func:`reconstruct_from_log`): honest fakes, recorded traffic.  Each
  feedback bounds every pixel of the real image from one side; the attacker
  intersects these half-intervals and projects its best guess without them
  (the mean of the fakes it sent for that mask) into the intersection.
  One wrong sign empties a pixel's interval, so a robust variant
  (:meth:`IntervalEstimate.robust`) drops the fewest bounds (up to 3 per side)
  that make the interval hold.
* Active (:class:`IntervalEstimate` driven by ``benchmarks/privacy.py``): the
  generator sends the midpoint of each pixel's interval as its "fake", reads
  the sign, and halves the interval: bisection, one bit per pixel per query.

Where the sign says nothing about the real image (``adversarial`` and
``segmentation`` feedback), the intervals are noise: the bisection lands on a
random image and the passive attacker finds contradictions and keeps its fakes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgan import grad_codec
from dgan import protocol as P
from dgan.msglog import Direction

FLIPS = (0, 1, 2, 3)  # none, left-right, up-down, both: the node's augmentations, each its own inverse


def flip(a: np.ndarray, code: int) -> np.ndarray:
    """Flip the last two axes (H, W) by ``code``."""
    if code & 1:
        a = a[..., ::-1]
    if code & 2:
        a = a[..., ::-1, :]
    return a


def canonical(mask: np.ndarray) -> tuple[bytes, int] | None:
    """(key, flip) that maps ``mask`` to one orientation shared by all its flips; None if it is symmetric.

    A symmetric mask (an empty one, say) does not tell which way its image was flipped, so it identifies
    no orientation and is left out of every attack.
    """
    variants = [np.ascontiguousarray(flip(mask, c)).tobytes() for c in FLIPS]
    if len(set(variants)) < len(variants):
        return None
    code = min(FLIPS, key=lambda c: variants[c])
    return hashlib.sha1(variants[code]).digest(), code


def to_unit(fakes: np.ndarray) -> np.ndarray:
    """Wire fakes (uint8 or float in [-1, 1]) as float32 in [-1, 1]."""
    if fakes.dtype == np.uint8:
        return fakes.astype(np.float32) / 127.5 - 1
    return fakes.astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.transpose(((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8), (1, 2, 0))


TOLERATE = 3  # wrong signs per pixel and side that the robust passive estimate shrugs off


@dataclass
class IntervalEstimate:
    """What the signs of the feedback say about one private image: per pixel, real in [lo, hi].

    It also keeps the next ``tolerate`` bounds on each side, so that :meth:`robust` can drop up to that many
    wrong signs per pixel and side: one wrong sign empties an exact interval, and an ``l1`` node's sign is
    wrong on a few % of pixels (its adversarial term), which over many feedbacks leaves few intervals whole.
    Memory: 2 * (tolerate + 1) + 1 planes of the image per estimate (27 at the default, 1.8 MB at 128 px).
    """

    shape: tuple[int, ...]
    tolerate: int = TOLERATE
    lows: np.ndarray = field(init=False)  # (tolerate + 1, *shape): the largest fakes the sign put below real,
    highs: np.ndarray = field(init=False)  # descending; and the smallest it put above, ascending
    fake_sum: np.ndarray = field(init=False)
    queries: int = 0

    def __post_init__(self) -> None:
        self.lows = np.full((self.tolerate + 1, *self.shape), -1.0, np.float32)
        self.highs = np.full((self.tolerate + 1, *self.shape), 1.0, np.float32)
        self.fake_sum = np.zeros(self.shape, np.float32)

    @property
    def lo(self) -> np.ndarray:
        return self.lows[0]

    @property
    def hi(self) -> np.ndarray:
        return self.highs[0]

    def midpoint(self) -> np.ndarray:
        """The bisection's next query (and its estimate)."""
        return np.where(self.lo <= self.hi, (self.lo + self.hi) / 2, 0.0).astype(np.float32)

    def update(self, fake: np.ndarray, grad: np.ndarray) -> None:
        """One feedback: grad > 0 reads as fake > real (real below fake), grad < 0 as real above fake."""
        below, above = np.where(grad < 0, fake, -1.0), np.where(grad > 0, fake, 1.0)
        for k in range(self.tolerate + 1):  # insert into the sorted bounds, one pass of a sorting network
            self.lows[k], below = np.maximum(self.lows[k], below), np.minimum(self.lows[k], below)
            self.highs[k], above = np.minimum(self.highs[k], above), np.maximum(self.highs[k], above)
        self.fake_sum += fake
        self.queries += 1

    def mean_fake(self) -> np.ndarray:
        return self.fake_sum / max(1, self.queries)

    def passive(self) -> np.ndarray:
        """The mean fake, projected into [lo, hi] wherever the intervals are consistent."""
        prior = self.mean_fake()
        return np.where(self.lo <= self.hi, np.clip(prior, self.lo, self.hi), prior)

    def consistency(self) -> float:
        """Share of pixels whose intervals do not contradict each other (1.0 for a truthful sign oracle)."""
        return float((self.lo <= self.hi).mean())

    def robust_interval(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, holds) per pixel: the interval left once the fewest bounds are dropped (i lower and j upper,
        each up to ``tolerate``, i + j smallest) so that it holds; among those with equally few, the one that moves
        the mean fake least (the fakes are the attacker's prior)."""
        prior = self.mean_fake()
        best = np.full(self.shape, np.inf, np.float32)
        lo_best, hi_best = np.full(self.shape, -1.0, np.float32), np.full(self.shape, 1.0, np.float32)
        for i in range(self.tolerate + 1):
            for j in range(self.tolerate + 1):
                lo, hi = self.lows[i], self.highs[j]
                move = np.abs(np.clip(prior, lo, hi) - prior)  # at most 2: the count below always dominates it
                cost = np.where(lo <= hi, 4.0 * (i + j) + move, np.inf)
                better = cost < best
                best = np.where(better, cost, best)
                lo_best, hi_best = np.where(better, lo, lo_best), np.where(better, hi, hi_best)
        return lo_best, hi_best, np.isfinite(best)

    def robust(self) -> np.ndarray:
        """The mean fake, projected into :meth:`robust_interval` where one holds; elsewhere the mean fake."""
        prior = self.mean_fake()
        lo, hi, holds = self.robust_interval()
        return np.where(holds, np.clip(prior, lo, hi), prior)

    def robust_consistency(self) -> float:
        """Share of pixels whose interval holds with up to ``tolerate`` wrong signs per side dropped."""
        return float((self.lows[-1] <= self.highs[-1]).mean())


@dataclass
class DescentEstimate:
    """The generator's own game played against one image: follow the (normalised) gradient, shrinking steps.

    Where the gradient only knows the node's data distribution, this walks to what the discriminator takes
    for a real image with this mask; where it knows the image (the L1 term), to the image.
    """

    shape: tuple[int, ...]
    current: np.ndarray = field(init=False)
    queries: int = 0

    def __post_init__(self) -> None:
        self.current = np.zeros(self.shape, np.float32)

    def update(self, grad: np.ndarray) -> None:
        rms = float(np.sqrt(np.mean(grad.astype(np.float64) ** 2)))
        if rms > 0:
            step = 0.2 * 0.9**self.queries  # the steps sum to at most 2: the whole [-1, 1] range
            self.current = np.clip(self.current - step * grad / rms, -1, 1).astype(np.float32)
        self.queries += 1


# ------------------------------------------------------------------ metrics


def psnr(estimate: np.ndarray, real: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(real, estimate, data_range=255))


def ssim(estimate: np.ndarray, real: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(real, estimate, channel_axis=-1, data_range=255))


def mean_colour(real: np.ndarray) -> np.ndarray:
    """The mean-colour baseline: each image's own average colour everywhere."""
    return np.broadcast_to(real.reshape(-1, 3).mean(0).round().astype(np.uint8), real.shape).copy()


# ------------------------------------------------------------------ passive, from a log


@dataclass
class Reconstruction:
    node: str
    key: bytes
    mask: np.ndarray  # canonical orientation, (H, W)
    estimate: IntervalEstimate


def feedback_samples(path: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(node, masks, fakes in [-1, 1], gradients) for every recorded feedback, joined through its request."""
    from dgan.replay import decoded

    requests: dict[tuple[str, int], np.ndarray] = {}
    served: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for _, rec, msg in decoded(path):
        if msg is None:
            continue
        if rec.direction == Direction.FROM_NODE and msg.kind == P.Kind.FAKE_REQUEST:
            requests[(rec.peer, msg.msg_id)] = np.array(msg.tensors["masks"])
        elif rec.direction in (Direction.FROM_GENERATOR, Direction.TO_NODE) and msg.kind == P.Kind.FAKES:
            # recorded as the generator sent it (peer: the node it is for); TO_NODE where a broker logs delivery
            masks = requests.pop((rec.peer, msg.reply_to), None)
            if masks is not None and msg.tensors["fakes"].shape[0] == len(masks):
                served[(rec.peer, msg.msg_id)] = (masks, to_unit(msg.tensors["fakes"]))
        elif rec.direction == Direction.FROM_NODE and msg.kind == P.Kind.FEEDBACK:
            got = served.pop((rec.peer, msg.reply_to), None)
            if got is not None and msg.tensors["grad"].shape == got[1].shape:
                try:  # int8 gradients come with their per-sample steps
                    grad = grad_codec.decode(msg.tensors["grad"], msg.tensors.get("grad_scales"))
                except ValueError:
                    continue  # the generator refused it too: it never steered anything
                yield rec.peer, got[0], got[1], grad


def reconstruct_from_log(path: Path, tolerate: int = TOLERATE) -> list[Reconstruction]:
    """The passive curious generator: one estimate per (node, distinct mask) from recorded traffic."""
    found: dict[tuple[str, bytes], Reconstruction] = {}
    for node, masks, fakes, grads in feedback_samples(path):
        _absorb(found, node, masks, fakes, grads, tolerate)
    return list(found.values())


def _absorb(found: dict[tuple[str, bytes], Reconstruction], node: str, masks: np.ndarray, fakes: np.ndarray,
            grads: np.ndarray, tolerate: int) -> None:
    for mask, fake, grad in zip(masks, fakes, grads, strict=True):
        canon = canonical(mask)
        if canon is None:
            continue
        key, code = canon
        item = found.get((node, key))
        if item is None:
            item = found[(node, key)] = Reconstruction(node, key, np.ascontiguousarray(flip(mask, code)),
                                                       IntervalEstimate(fake.shape, tolerate))
        item.estimate.update(np.ascontiguousarray(flip(fake, code)), np.ascontiguousarray(flip(grad, code)))


def index_real(images: np.ndarray, masks: np.ndarray) -> dict[bytes, np.ndarray]:
    """Canonical mask key -> the real image in that orientation, (H, W, 3) uint8 (ambiguous masks left out)."""
    out: dict[bytes, np.ndarray] = {}
    seen: set[bytes] = set()
    for image, mask in zip(images, masks, strict=True):
        canon = canonical(mask)
        if canon is None:
            continue
        key, code = canon
        if key in seen:  # two images share this mask: the mask does not identify either
            out.pop(key, None)
            continue
        seen.add(key)
        out[key] = np.ascontiguousarray(flip(np.transpose(image, (2, 0, 1)), code).transpose(1, 2, 0))
    return out


@dataclass
class Score:
    images: int
    feedbacks: float  # mean per image
    psnr_db: float
    ssim: float
    fakes_psnr_db: float
    fakes_ssim: float
    mean_colour_psnr_db: float
    consistency: float


def score(estimates: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, int, float]]) -> Score:
    """Mean PSNR/SSIM over (estimate, mean fake, real, feedbacks, consistency) rows, all uint8 (H, W, 3)."""
    rows = list(estimates)
    if not rows:
        nan = float("nan")
        return Score(0, 0.0, nan, nan, nan, nan, nan, nan)
    return Score(
        images=len(rows), feedbacks=float(np.mean([r[3] for r in rows])),
        psnr_db=float(np.mean([psnr(e, r) for e, _, r, _, _ in rows])),
        ssim=float(np.mean([ssim(e, r) for e, _, r, _, _ in rows])),
        fakes_psnr_db=float(np.mean([psnr(f, r) for _, f, r, _, _ in rows])),
        fakes_ssim=float(np.mean([ssim(f, r) for _, f, r, _, _ in rows])),
        mean_colour_psnr_db=float(np.mean([psnr(mean_colour(r), r) for _, _, r, _, _ in rows])),
        consistency=float(np.mean([r[4] for r in rows])))


@dataclass
class LogScore:
    """Both passive attacks on one log, with the same baselines: ``intervals`` (exact) and ``robust`` (the fewest
    bounds dropped, up to ``tolerate`` per side); ``robust_consistency``: pixels where a robust interval holds."""

    intervals: Score
    robust: Score
    robust_consistency: float

    @property
    def best_gain_db(self) -> float:
        """The better attack's PSNR over the fakes: what the curious generator gets from the feedback."""
        return max(self.intervals.psnr_db, self.robust.psnr_db) - self.intervals.fakes_psnr_db


def score_log(path: Path, images: np.ndarray, masks: np.ndarray, min_feedbacks: int = 1,
              tolerate: int = TOLERATE) -> tuple[LogScore, list[tuple[Reconstruction, np.ndarray]]]:
    """Reconstruct from ``path`` and compare with the real pairs matched by mask."""
    real = index_real(images, masks)
    matched = [(r, real[r.key]) for r in reconstruct_from_log(path, tolerate)
               if r.key in real and r.estimate.queries >= min_feedbacks]
    fakes = [to_uint8(r.estimate.mean_fake()) for r, _ in matched]
    rows = [(r.estimate.queries, r.estimate.consistency()) for r, _ in matched]
    intervals = score((to_uint8(r.estimate.passive()), f, im, *row)
                      for (r, im), f, row in zip(matched, fakes, rows, strict=True))
    robust = score((to_uint8(r.estimate.robust()), f, im, *row)
                   for (r, im), f, row in zip(matched, fakes, rows, strict=True))
    held = float(np.mean([r.estimate.robust_consistency() for r, _ in matched])) if matched else float("nan")
    return LogScore(intervals, robust, held), matched
