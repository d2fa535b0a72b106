"""Pure routing decisions: no I/O, no clocks (``now`` is passed in), no globals.

The router turns its nodes into :class:`Candidate` snapshots (:func:`candidate_for`) and asks a
:class:`Scheduler` to order them: the first is the choice, the rest are failovers.

Load estimate for a node (:func:`estimate_load`): the agent's last report of requests in flight
at the node, corrected by how this router's own count moved since that report (so the router's
exact reservations show at once, between reports), never below this router's own count. A report
older than ``stale_after_s`` is unknown, not zero: only the router's own count is used then.

``least_loaded`` (the default) scores each candidate by its expected queueing per parallel slot,
``(load + 1) / slots / weight``, with a penalty for degraded nodes and for a model that would
have to be loaded first (cold start); ties are broken at random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from router.registry import ROUTABLE, Node, NodeState

DEFAULT_SLOTS = 4
DEGRADED_PENALTY = 1.5
COLD_START_PENALTY = 4.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the scheduler knows of one node for one request."""

    node_id: str
    degraded: bool
    weight: float
    loaded: bool
    load: float
    slots: int
    own_in_flight: int


def estimate_load(
    own_now: int,
    own_at_report: int,
    reported_in_flight: int | None,
    report_age_s: float | None,
    stale_after_s: float,
) -> int:
    """Requests in flight at the node, as well as this router can tell now."""
    if reported_in_flight is None or report_age_s is None or report_age_s > stale_after_s:
        return own_now
    return max(own_now, reported_in_flight + own_now - own_at_report)


def candidate_for(
    node: Node, model: str, threshold: int, now: float, stale_after_s: float
) -> Candidate | None:
    """The node as a candidate for ``model``, or None when it must not get new requests."""
    state = node.state(threshold)
    if state not in ROUTABLE:
        return None
    entry = None
    for m in node.models():
        if m.id == model or model in m.aliases:
            entry = m
            break
    if entry is None:
        return None
    report = node.report
    age = None if node.report_received_at is None else now - node.report_received_at
    reported = report.in_flight if report is not None else None
    if report is not None and report.queue_waiting is not None:
        reported = max(reported or 0, report.queue_waiting + (report.queue_running or 0))
    return Candidate(
        node_id=node.node_id,
        degraded=state is NodeState.DEGRADED,
        weight=node.registration.weight,
        loaded=entry.loaded,
        load=estimate_load(node.in_flight, node.own_at_report, reported, age, stale_after_s),
        slots=entry.max_parallel or DEFAULT_SLOTS,
        own_in_flight=node.in_flight,
    )


def least_loaded_score(c: Candidate) -> float:
    score = (c.load + 1.0) / c.slots / c.weight
    if not c.loaded:
        score += COLD_START_PENALTY
    if c.degraded:
        score *= DEGRADED_PENALTY
    return score


class Scheduler:
    """Orders candidates by a group's policy. Holds only its random source and rotation
    counters; deterministic for a seeded ``rng``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._rotation: dict[str, int] = {}

    def order(self, policy: str, key: str, candidates: Sequence[Candidate]) -> list[str]:
        """Node ids, best first. ``key`` names the rotation (group and model) for round robin."""
        if not candidates:
            return []
        rand = self._rng.random
        if policy == "least_loaded":
            ranked = sorted(candidates, key=lambda c: (least_loaded_score(c), rand()))
        elif policy == "least_connections":
            ranked = sorted(
                candidates, key=lambda c: (c.own_in_flight / c.weight, c.degraded, rand())
            )
        elif policy == "round_robin":
            ordered = sorted(candidates, key=lambda c: c.node_id)
            turn = self._rotation.get(key, 0)
            self._rotation[key] = turn + 1
            start = turn % len(ordered)
            ranked = ordered[start:] + ordered[:start]
        elif policy == "random":
            ranked = list(candidates)
            self._rng.shuffle(ranked)
        else:
            raise ValueError(f"unknown policy {policy!r}")
        return [c.node_id for c in ranked]
