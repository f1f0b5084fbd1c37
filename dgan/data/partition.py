"""Split a dataset across nodes, as the flwr-datasets partitioners do (without Hugging Face).

* ``iid``: shuffled equal parts.
* ``dirichlet``: per bin of a per-sample statistic (e.g. building fraction), node shares drawn
  from Dirichlet(alpha): small alpha = very different nodes.
* ``size``: skewed sizes (geometric, largest 4x the smallest).
* ``group``: by a manifest column (tile, city): each node holds whole groups, the realistic case
  for departments; the groups per node are given or dealt round-robin by size.

All are seeded and reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dgan.choices import Partition, values

PARTITIONS = values(Partition)


def partition(n_items: int, n_nodes: int, how: str, seed: int = 0, stat: Sequence[float] | None = None,
              alpha: float = 0.5, bins: int = 4, groups: Sequence[str] | None = None,
              node_groups: Sequence[Sequence[str]] | None = None) -> list[list[int]]:
    if n_nodes < 1 or n_items < n_nodes:
        raise ValueError(f"{n_items} items cannot be split across {n_nodes} nodes")
    rng = np.random.default_rng(seed)
    if how == "iid":
        return [sorted(int(i) for i in part) for part in np.array_split(rng.permutation(n_items), n_nodes)]
    if how == "size":
        weights = np.geomspace(1, 4, n_nodes)
        cuts = np.floor(np.cumsum(weights / weights.sum())[:-1] * n_items).astype(int)
        return [sorted(int(i) for i in part) for part in np.split(rng.permutation(n_items), cuts)]
    if how == "dirichlet":
        if stat is None or len(stat) != n_items:
            raise ValueError("dirichlet needs one statistic per item (e.g. building fraction)")
        values = np.asarray(stat, float)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        which = np.digitize(values, edges)
        parts: list[list[int]] = [[] for _ in range(n_nodes)]
        for b in np.unique(which):
            members = rng.permutation(np.nonzero(which == b)[0])
            shares = rng.dirichlet([alpha] * n_nodes)
            cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node] += [int(i) for i in chunk]
        for node in range(n_nodes):  # no node may be empty: lend it one item from the largest
            if not parts[node]:
                donor = max(range(n_nodes), key=lambda k: len(parts[k]))
                parts[node].append(parts[donor].pop())
        return [sorted(p) for p in parts]
    if how == "group":
        if groups is None or len(groups) != n_items:
            raise ValueError("group needs one group label per item (a manifest column)")
        labels = [str(g) for g in groups]
        if node_groups is None:
            sizes = {g: labels.count(g) for g in set(labels)}
            if len(sizes) < n_nodes:
                raise ValueError(f"{len(sizes)} groups cannot be dealt to {n_nodes} nodes")
            load = [0] * n_nodes
            assign: list[list[str]] = [[] for _ in range(n_nodes)]
            for g in sorted(sizes, key=lambda g: (-sizes[g], g)):  # largest first, to the lightest node
                k = min(range(n_nodes), key=lambda k: load[k])
                assign[k].append(g)
                load[k] += sizes[g]
            node_groups = assign
        if len(node_groups) != n_nodes:
            raise ValueError(f"{len(node_groups)} group lists given for {n_nodes} nodes")
        seen = [g for gs in node_groups for g in gs]
        if len(seen) != len(set(seen)):
            raise ValueError("a group is given to more than one node")
        out = [[i for i, g in enumerate(labels) if g in {str(x) for x in gs}] for gs in node_groups]
        if any(not p for p in out):
            raise ValueError(f"a node got no items: groups {node_groups} vs labels {sorted(set(labels))}")
        return out
    raise ValueError(f"unknown partition {how!r}; choose from {', '.join(PARTITIONS)}")


def summary(parts: list[list[int]], masks: np.ndarray) -> list[dict[str, float]]:
    """Per node: how many pairs and what share of their pixels are buildings."""
    return [{"node": k, "count": len(p), "building_fraction": float((masks[p] > 0).mean()) if p else 0.0}
            for k, p in enumerate(parts)]
