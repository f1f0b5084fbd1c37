"""Who is served when, and when the generator steps: the async/sync round policy, as pure logic.

The generator service asks this object what to do with each event and does
it; nothing here knows messages, sockets or torch, so every case is tested
in-process (``tests/test_round_policy.py``).

* **async**: every request is served at once; the generator steps after every
  ``update_every`` applied feedbacks, or with ``update_every=0`` (buffered
  async, as FedBuff) after as many feedbacks as there are member nodes, from
  whichever nodes they come: the step averages several discriminators and the
  staleness drops by that factor, with no node ever waiting for another.
  With ``update_every=-1`` (staleness-aware) the buffer follows the requests
  in flight: a request's staleness is about the feedbacks that arrive while it
  is out, over the buffer, so the buffer is ``ceil(2 * inflight /
  max_staleness)``, keeping the expected staleness near half the bound.  Nodes
  on slow links keep more requests in flight (``--pipeline auto``); the
  generator then steps on more feedbacks at once instead of dropping theirs.
* **sync** (AsynDGAN/FedML-style rounds): each member node is served once per
  round; a second request from it waits in a bounded queue for the next round.
  The round closes when every member has fed back. A member is a node that
  has asked for fakes and not left since: a node that departs, is ignored for
  bad messages, whose fakes could not be delivered, or whose feedback was
  refused *leaves the round*, so the round never waits for an answer that
  cannot come. It rejoins with its next request. A member served but silent
  for ``round_timeout`` seconds is overdue (the service releases and drops
  it): no round waits without bound.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class Action(enum.Enum):
    SERVE = "serve"  # make fakes now
    DEFER = "defer"  # sync: already served this round; queued for the next
    REFUSE = "refuse"  # the deferred queue is full: tell the node to ask again later


@dataclass
class RoundPolicy:
    mode: str = "async"  # "async" or "sync"
    update_every: int = 1  # async: applied feedbacks per generator step; 0: one per member node; -1: by staleness
    max_deferred: int = 256  # sync: requests waiting for the next round, all nodes together
    max_deferred_per_node: int = 4
    members: set[str] = field(default_factory=set)
    served: set[str] = field(default_factory=set)
    fed_back: set[str] = field(default_factory=set)
    deferred: deque[tuple[str, Any]] = field(default_factory=deque)
    served_at: dict[str, float] = field(default_factory=dict)  # sync: when each member was served this round
    rounds: int = 0
    max_staleness: int = 8  # update_every -1: the bound the buffer keeps staleness under
    inflight: int = 0  # update_every -1: requests in flight now (the service keeps it current)

    def __post_init__(self) -> None:
        if self.mode not in ("async", "sync"):
            raise ValueError(f"round policy mode must be async or sync, got {self.mode!r}")
        if self.update_every < -1 or self.max_deferred < 0 or self.max_deferred_per_node < 0:
            raise ValueError("update_every must be >= 0 (0: one feedback per member node; -1: by staleness) and "
                             "the deferred bounds >= 0")

    @property
    def buffer(self) -> int:
        """Async: applied feedbacks per generator step."""
        if self.update_every == -1:
            return max(1, math.ceil(2 * self.inflight / max(1, self.max_staleness)))
        return self.update_every or max(1, len(self.members))

    @property
    def sync(self) -> bool:
        return self.mode == "sync"

    def request(self, node: str, item: Any) -> Action:
        """A node asks for fakes; ``item`` is what to hand back with :meth:`next_round` if it must wait."""
        self.members.add(node)
        if not self.sync or node not in self.served:
            return Action.SERVE
        mine = sum(1 for n, _ in self.deferred if n == node)
        if len(self.deferred) >= self.max_deferred or mine >= self.max_deferred_per_node:
            return Action.REFUSE
        self.deferred.append((node, item))
        return Action.DEFER

    def was_served(self, node: str, now: float = 0.0) -> None:
        self.served.add(node)
        self.served_at.setdefault(node, now)

    def feedback(self, node: str, pending: int) -> bool:
        """A feedback was taken (applied, or dropped as stale); ``pending``: feedbacks since the last step.
        True: step the generator now (async), or close the round (sync)."""
        if not self.sync:
            return pending >= self.buffer
        if node in self.served:  # an answer to an earlier round's fakes does not answer this round's
            self.fed_back.add(node)
        return self.round_complete()

    def leave(self, node: str, pending: int = 0) -> bool:
        """``node`` leaves the round (and the membership, until its next request).
        True: in sync mode, the round it held open is now complete; in buffered async, the ``pending``
        feedbacks already fill the smaller buffer."""
        self.members.discard(node)
        self.served.discard(node)
        self.fed_back.discard(node)
        self.served_at.pop(node, None)
        self.deferred = deque((n, it) for n, it in self.deferred if n != node)
        if not self.sync:
            return pending > 0 and pending >= self.buffer
        return self.round_complete()

    def overdue(self, now: float, timeout: float) -> list[str]:
        """Sync: members served this round more than ``timeout`` seconds ago that have not answered."""
        if not self.sync or timeout <= 0:
            return []
        return [n for n, t in self.served_at.items() if n not in self.fed_back and now - t > timeout]

    def round_complete(self) -> bool:
        return bool(self.members) and self.members <= self.fed_back

    def next_round(self) -> list[tuple[str, Any]]:
        """Close the round; returns the deferred requests, oldest first, to be handled again."""
        self.rounds += 1
        self.served.clear()
        self.fed_back.clear()
        self.served_at.clear()
        waiting, self.deferred = list(self.deferred), deque()
        return waiting
