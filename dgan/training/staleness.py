"""How much a feedback counts, given its staleness: the bound, and what happens past it. Pure, tested in-process.

``drop`` (the default) applies every feedback up to ``bound`` steps stale at full weight and drops the rest.
On a mixed network that can shut a department out: a node behind a slow link answers after the others have
moved the generator past the bound, so nearly all its feedbacks are dropped (``dgan bench wan``, far+slow) and
its data stops counting while the totals look healthy. ``discount`` keeps it in, in the spirit of FedAsync's
hinge staleness function (Xie et al. 2019: full weight up to a bound, a falling one past it): past the bound a
feedback is applied with weight ``bound / staleness``, and only past ``DISCOUNT_CAP x bound`` is it dropped, so a
gradient from a generator long gone never steers the current one. The weight is relative: the generator's step
is the sum of its feedbacks' weighted gradients over their count, so a discounted one also makes the step smaller.
"""

from __future__ import annotations

from dgan.choices import StalePolicy

DISCOUNT_CAP = 4  # discount: feedbacks staler than this many times the bound are dropped all the same
POLICIES = tuple(p.value for p in StalePolicy)


def stale_weight(staleness: int, bound: int, policy: str = StalePolicy.drop.value) -> float | None:
    """The factor on a feedback ``staleness`` steps stale, or None to drop it."""
    if policy not in POLICIES:
        raise ValueError(f"stale policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if staleness <= bound:
        return 1.0
    if policy == StalePolicy.drop.value or staleness > DISCOUNT_CAP * bound:
        return None
    return bound / staleness


def drop_reason(staleness: int, bound: int, policy: str) -> str:
    """Why :func:`stale_weight` dropped a feedback, in the words of the rule that did."""
    cap = bound if policy == StalePolicy.drop.value else DISCOUNT_CAP * bound
    return f"staleness {staleness} > {cap}" + ("" if policy == StalePolicy.drop.value else
                                                f" ({DISCOUNT_CAP} x --max-staleness {bound}, discounted above it)")
