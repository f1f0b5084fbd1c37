"""Snapshots of the generator's weights late in training, to synthesise from several of them.

An EMA averages weights, and async DGAN's EMA sets failed where the central GAN's held (issue 13). Snapshots
average in image space instead: each mask of a synthetic set is drawn by one of the last few snapshots, so one
unlucky last step spoils a share of the set, not all of it (docs/results/update-rule.md, session 17).
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

import torch


class WeightSnapshots:
    """G's weights every ``every`` steps counted back from the planned ``last`` step, the last ``keep`` of them;
    the latest weights always take part in synthesis (a run that stops early, or between snapshots)."""

    def __init__(self, keep: int, every: int, last: int) -> None:
        if keep < 0 or keep == 1 or every < 1:
            raise ValueError(f"snapshots must be >= 0 and not 1 (one is the last weights), and snapshot_every >= 1; "
                             f"got {keep} and {every}")
        self.keep, self.every, self.last = keep, every, last
        self.kept: collections.deque[tuple[int, dict[str, torch.Tensor]]] = collections.deque(maxlen=max(1, keep))

    def after_step(self, step: int, G: torch.nn.Module) -> None:
        if self.keep and (self.last - step) % self.every == 0:
            self.kept.append((step, {k: v.detach().clone() for k, v in G.state_dict().items()}))

    def members(self, step: int, G: torch.nn.Module) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The weights a set is drawn from: the kept snapshots, the oldest giving way to the latest weights when
        those are not kept."""
        kept = list(self.kept) if self.keep else []
        if not kept or kept[-1][0] != step:
            kept = [*kept[max(0, len(kept) - self.keep + 1):], (step, G.state_dict())]
        return kept

    def available(self, step: int, G: torch.nn.Module) -> bool:
        """True once there are two weights to spread a set over (before that a set would be the raw weights')."""
        return len(self.members(step, G)) >= 2

    def drift(self, step: int, G: torch.nn.Module) -> float | None:
        """Mean distance between consecutive members, relative to the later one's norm: how far G moves."""
        members = self.members(step, G)
        if len(members) < 2:
            return None
        return sum(relative_distance(a[1], b[1]) for a, b in itertools.pairwise(members)) / (len(members) - 1)

    def state(self) -> dict[str, Any]:
        return {"G_snapshots": [[s, w] for s, w in self.kept]} if self.keep else {}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.kept.clear()
        for s, w in state.get("G_snapshots", []) if self.keep else []:
            self.kept.append((int(s), {k: v.to(device) for k, v in w.items()}))  # the deque keeps the last ``keep``


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over every floating-point tensor of two state dicts."""
    num = sum(float((a[k].float() - v.float()).pow(2).sum()) for k, v in b.items() if v.is_floating_point())
    den = sum(float(v.float().pow(2).sum()) for v in b.values() if v.is_floating_point())
    return (num / den) ** 0.5 if den > 0 else 0.0
