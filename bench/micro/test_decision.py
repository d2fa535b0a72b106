"""One routing decision: at most 10 us at 16 candidates and 100 us at 1,000 (medians).

A decision is what the router does per request with the roster it keeps of the model's nodes
(:class:`router.roster.Roster`, standings from the nodes' last reports and its own counts):
estimate each node's load now, score, and return the ``max_attempts`` (3) best. Without a
prefix term the roster keeps the open nodes' scores between decisions and makes again only
those of the nodes whose slots moved (:mod:`router.kept_scores`, :mod:`router.kept_columns`):
a decision alone reads them, a decision with its slot (reserved, and another released) makes
two rows again, as each request does. Measured at 16, 64 and 1,000 candidates, with and
without the prefix term (each candidate's uncached prefill seconds); alone, and with its slot;
and, at 1,000, every policy on the column path. Run::

    pytest bench/micro --benchmark-warmup=on --benchmark-disable-gc --benchmark-min-rounds=20 \\
        --benchmark-json=results/micro.json
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import numpy as np
import pytest

from bench.micro import within_budget
from node_protocol.wire import GpuReport, LoadReport, ModelReport, Registration
from router.registry import Registry, Reservation
from router.roster import CandidateRules, Roster
from router.scheduling import Candidate, CandidateTable, Scheduler, estimate_loads, node_hashes

BUDGET_S = {16: 10e-6, 64: 30e-6, 1000: 100e-6}
SLOT_BUDGET_S = {16: 20e-6, 64: 40e-6, 1000: 110e-6}  # with a reservation and a release
# With a prefill term per row (the prompt-cache term), which costs a list built per request.
PREFIX_BUDGET_S = {16: 20e-6, 64: 50e-6, 1000: 200e-6}
PREFIX_SLOT_BUDGET_S = {16: 30e-6, 64: 60e-6, 1000: 210e-6}
NOW = 2.0
GIB = 2**30


def roster(n: int, seed: int = 1) -> Roster:
    """``n`` agent nodes of one model: mixed GPU speeds, 8 slots (cap 16), reports up to 2 s old
    with up to 7 requests, one node in ten without the model loaded, this router's own requests
    on most."""
    rng = random.Random(seed)
    registry = Registry("least_loaded", 3)
    nodes = []
    for i in range(n):
        node, _ = registry.register("g", Registration(f"node-{i:04d}", "http://x"), 0.0)
        model = ModelReport("m", loaded=rng.random() > 0.1, vram_bytes=8 * GIB,
                            size_bytes=5 * GIB, max_parallel=8)  # fmt: skip
        running = rng.randint(0, 7)
        report = LoadReport(
            1, 0.0, "vllm", "ok", running, models=(model,),
            gpus=(GpuReport(0, "GPU", 24 * GIB, 12 * GIB),), queue_running=running,
            output_tokens_per_s=running * rng.uniform(15, 120),
        )  # fmt: skip
        registry.apply_report(node, report, NOW - rng.uniform(0, 2))
        nodes.append(node)
    for node in nodes:
        for _ in range(rng.randint(0, 3)):
            Reservation(node, "m")
    return Roster(nodes, ("m",), CandidateRules(3, 3.0, cap_factor=2.0))


def check(benchmark: Any, budget_s: float) -> None:
    within_budget(benchmark, budget_s)


@pytest.mark.parametrize("prefix", [False, True], ids=["plain", "prefix"])
@pytest.mark.parametrize("n", [16, 64, 1000])
class TestRosterDecision:
    """``least_loaded`` over a kept roster, as the router decides per request."""

    def test_decision(self, benchmark: Any, n: int, prefix: bool) -> None:
        """Pick the 3 best of ``n`` candidates within the budget (median)."""
        kept = roster(n)
        prefill = np.random.default_rng(2).uniform(0, 2, n).tolist() if prefix else None
        sched = Scheduler(random.Random(1))

        def decide() -> list[int] | None:
            return kept.decide(sched, "least_loaded", "g/m", NOW, limit=3, prefill_s=prefill)

        rows = benchmark(decide)
        assert rows is not None
        assert len(rows) == 3
        check(benchmark, (PREFIX_BUDGET_S if prefix else BUDGET_S)[n])

    def test_decision_with_its_slot(self, benchmark: Any, n: int, prefix: bool) -> None:
        """The same, reserving the chosen node and releasing a slot taken earlier, as requests
        come and go (the kept scores of both nodes are made again)."""
        kept = roster(n)
        prefill = np.random.default_rng(2).uniform(0, 2, n).tolist() if prefix else None
        sched = Scheduler(random.Random(1))
        held: deque[Reservation] = deque()

        def request() -> None:
            rows = kept.decide(sched, "least_loaded", "g/m", NOW, limit=3, prefill_s=prefill)
            assert rows
            held.append(Reservation(kept.nodes[rows[0]], "m"))
            if len(held) > 8:
                held.popleft().release()

        benchmark(request)
        check(benchmark, (PREFIX_SLOT_BUDGET_S if prefix else SLOT_BUDGET_S)[n])


def table(n: int, seed: int = 1) -> tuple[CandidateTable, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    candidates = CandidateTable(
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
        "own_at": candidates.own - rng.integers(0, 2, n),
        "reported": rng.integers(0, 8, n).astype(float),
        "age": rng.uniform(0, 2, n),
    }
    return candidates, state


def decide_on_table(sched: Scheduler, policy: str, t: CandidateTable, state: dict[str, Any]) -> Any:
    t.load, stale = estimate_loads(t.own, state["own_at"], state["reported"], state["age"], 3.0)
    t.penalty = np.where(stale, 1.25, 1.0)
    return sched.rank(policy, "g/m", t, limit=3, affinity="session-42")


class TestColumnsAt1000Nodes:
    """Each policy decides among 1,000 nodes' columns within the budget."""

    @pytest.mark.parametrize(
        "policy", ["least_loaded", "power_of_two", "sticky", "round_robin", "least_connections"]
    )
    def test_decision(self, benchmark: Any, policy: str) -> None:
        """Estimate loads and pick the 3 best of 1,000 nodes in at most 100 us (median)."""
        t, state = table(1000)
        rows = benchmark(decide_on_table, Scheduler(random.Random(1)), policy, t, state)
        assert len(rows) == 3
        check(benchmark, BUDGET_S[1000])


class TestCandidateList:
    """Candidates built afresh (:meth:`Scheduler.order`) stay cheap enough too."""

    def test_order_eight_candidates(self, benchmark: Any) -> None:
        """Ordering 8 Candidate snapshots in at most 100 us."""
        rng = random.Random(2)
        cands = [
            Candidate(f"n{i}", False, 1.0, True, rng.randint(0, 6), 4, 0, tok_s=40.0, cap=8)
            for i in range(8)
        ]
        order = benchmark(Scheduler(random.Random(3)).order, "least_loaded", "g/m", cands, limit=3)
        assert len(order) <= 3
        check(benchmark, BUDGET_S[1000])
