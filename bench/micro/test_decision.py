"""One routing decision at 1,000 nodes must cost at most 100 us.

A decision is what the router does per request on a kept :class:`CandidateTable`: estimate every
node's load from its own counts and the last reports, then rank by the policy, returning the
``max_attempts`` (3) best. Run::

    pytest bench/micro --benchmark-warmup=on --benchmark-disable-gc --benchmark-min-rounds=20 \\
        --benchmark-json=results/micro.json
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from router.scheduling import (
    Candidate,
    CandidateTable,
    Scheduler,
    estimate_loads,
    node_hashes,
)

NODES = 1000
BUDGET_S = 100e-6


def fleet(n: int, seed: int = 1) -> tuple[CandidateTable, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    table = CandidateTable(
        ids=[f"node-{i:04d}" for i in range(n)],
        load=np.zeros(n),
        slots=rng.choice([4.0, 8.0], n),
        cap=np.full(n, 16.0),
        tok_s=rng.uniform(15, 120, n),
        weight=np.ones(n),
        cold_s=np.where(rng.random(n) < 0.1, 6.0, 0.0),
        penalty=np.ones(n),
        own=rng.integers(0, 4, n).astype(float),
        hashes=node_hashes([f"node-{i:04d}" for i in range(n)]),
    )
    state = {
        "own_at": table.own - rng.integers(0, 2, n),
        "reported": rng.integers(0, 8, n).astype(float),
        "age": rng.uniform(0, 2, n),
    }
    return table, state


def decide(sched: Scheduler, policy: str, table: CandidateTable, state: dict[str, Any]) -> Any:
    table.load, stale = estimate_loads(
        table.own, state["own_at"], state["reported"], state["age"], 3.0
    )
    table.penalty = np.where(stale, 1.25, 1.0)
    return sched.rank(policy, "g/m", table, limit=3, affinity="session-42")


def check(benchmark: Any) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        assert stats.stats.median <= BUDGET_S


class TestDecisionAt1000Nodes:
    """Each policy decides among 1,000 nodes within the budget."""

    @pytest.mark.parametrize(
        "policy", ["least_loaded", "power_of_two", "sticky", "round_robin", "least_connections"]
    )
    def test_decision(self, benchmark: Any, policy: str) -> None:
        """Estimate loads and pick the 3 best of 1,000 nodes in at most 100 us (median)."""
        table, state = fleet(NODES)
        sched = Scheduler(random.Random(1))
        rows = benchmark(decide, sched, policy, table, state)
        assert len(rows) == 3
        check(benchmark)


class TestSmallGroup:
    """The router's list path over a handful of candidates stays cheap too."""

    def test_order_eight_candidates(self, benchmark: Any) -> None:
        """Ordering 8 Candidate snapshots (the per-request path today) in at most 100 us."""
        rng = random.Random(2)
        cands = [
            Candidate(f"n{i}", False, 1.0, True, rng.randint(0, 6), 4, 0, tok_s=40.0, cap=8)
            for i in range(8)
        ]
        sched = Scheduler(random.Random(3))
        order = benchmark(sched.order, "least_loaded", "g/m", cands, limit=3)
        assert len(order) <= 3
        check(benchmark)
