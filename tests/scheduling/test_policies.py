"""Scheduling policies, judged by the spread of many decisions, and the load estimates."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest

from node_protocol.wire import GpuReport, LoadReport, ModelReport, Registration
from router.registry import Registry
from router.scheduling import (
    DEFAULT_LOAD_S,
    EVICT_FACTOR,
    POLICIES,
    Candidate,
    CandidateTable,
    Scheduler,
    batch_one_speed,
    candidate_for,
    estimate_load,
    estimate_loads,
)

GIB = 1024**3


def cand(node_id: str, load: float = 0, **kw: object) -> Candidate:
    base: dict[str, object] = {
        "node_id": node_id,
        "degraded": False,
        "weight": 1.0,
        "loaded": True,
        "load": load,
        "slots": 4,
        "own_in_flight": 0,
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def firsts(sched: Scheduler, policy: str, cands: list[Candidate], n: int) -> Counter[str]:
    return Counter(sched.order(policy, "g/m", cands)[0] for _ in range(n))


class TestLeastLoaded:
    """The default policy goes where the request is served soonest."""

    def test_faster_node_wins_between_free_ones(self) -> None:
        """Of two idle nodes the one measured faster is chosen."""
        cands = [cand("slow", tok_s=20.0), cand("fast", tok_s=80.0)]
        assert Scheduler(random.Random(1)).order("least_loaded", "k", cands)[0] == "fast"

    def test_free_slot_beats_a_queue_on_a_fast_node(self) -> None:
        """A fast node with two requests queued loses to a free slot on a slower one."""
        cands = [cand("slow", tok_s=30.0), cand("fast", load=6, tok_s=60.0)]
        assert Scheduler(random.Random(1)).order("least_loaded", "k", cands)[0] == "slow"

    def test_residency_costs_order_nodes(self) -> None:
        """Loaded beats loadable, which beats loadable only by evicting another model."""
        cands = [
            cand("evict", loaded=False, cold_s=6.0 * EVICT_FACTOR),
            cand("free-vram", loaded=False, cold_s=6.0),
            cand("hot", load=2),
        ]
        order = Scheduler(random.Random(2)).order("least_loaded", "k", cands)
        assert order == ["hot", "free-vram", "evict"]

    def test_stale_node_ranks_below_an_equal_fresh_one(self) -> None:
        """A node whose load is unknown (stale report) loses a tie to a fresh one."""
        cands = [cand("stale", stale=True), cand("fresh")]
        assert Scheduler(random.Random(3)).order("least_loaded", "k", cands)[0] == "fresh"

    def test_limit_returns_only_the_best(self) -> None:
        """With a limit, only that many candidates come back, best first."""
        cands = [cand(f"n{i}", load=i) for i in range(50)]
        assert Scheduler(random.Random(4)).order("least_loaded", "k", cands, limit=3) == [
            "n0",
            "n1",
            "n2",
        ]


class TestCaps:
    """With concurrency caps, full nodes are never chosen and the caller queues instead."""

    def test_full_nodes_are_left_out(self) -> None:
        """A node at its cap is not returned by any policy."""
        cands = [cand("full", load=8, cap=8), cand("open", load=1, cap=8)]
        for policy in POLICIES:
            order = Scheduler(random.Random(5)).order(policy, "k", cands, affinity="s")
            assert "full" not in order, policy

    def test_load_aware_policies_wait_rather_than_queue_at_a_node(self) -> None:
        """least_loaded returns nothing when every slot is busy and this router's own
        requests will free one soon; round robin still sends to a node under its cap."""
        cands = [cand(f"n{i}", load=4, own_in_flight=4, cap=8, tok_s=60.0) for i in range(4)]
        sched = Scheduler(random.Random(6))
        assert sched.order("least_loaded", "k", cands) == []
        assert sched.order("round_robin", "k", cands)

    def test_cold_load_waits_when_a_hot_slot_frees_sooner(self) -> None:
        """A cold node is not chosen while a full node with the model loaded frees a slot
        sooner than the model would load."""
        hot = cand("hot", load=4, own_in_flight=4, cap=4, tok_s=400.0)
        cold = cand("cold", loaded=False, cold_s=20.0, cap=4)
        assert Scheduler(random.Random(7)).order("least_loaded", "k", [hot, cold]) == []
        slow_hot = cand("hot", load=4, own_in_flight=4, cap=4, tok_s=2.0)
        assert Scheduler(random.Random(7)).order("least_loaded", "k", [slow_hot, cold]) == ["cold"]

    def test_a_full_node_holding_the_prompt_beats_a_free_node_reading_all_of_it(self) -> None:
        """With a prompt to weigh, a node whose slots are all busy (under its cap) is chosen
        when its wait costs less than the prefill a free node would spend; not otherwise."""
        held = cand("held", load=4, cap=8, tok_s=60.0, prefill_s=0.0)
        free = cand("free", load=0, cap=8, tok_s=60.0, prefill_s=40.0)
        sched = Scheduler(random.Random(8))
        assert sched.order("least_loaded", "k", [held, free]) == ["held", "free"]
        cheap = dataclasses.replace(free, prefill_s=0.5)
        assert sched.order("least_loaded", "k", [held, cheap])[0] == "free"
        blind = [dataclasses.replace(c, prefill_s=0.0) for c in (held, free)]
        assert sched.order("least_loaded", "k", blind) == ["free"]

    def test_a_request_queued_at_a_full_node_counts_the_wait_it_passes_on(self) -> None:
        """Queueing at the full node costs its own wait (1.23 s here) and as much again for
        the requests that come to that node after it: a free node is chosen while its prefill
        is under twice that wait, the full node once the prefill is over it."""
        held = cand("held", load=4, cap=8, tok_s=60.0, prefill_s=0.0)
        sched = Scheduler(random.Random(8))
        for prefill_s, first in ((1.2, "free"), (2.0, "free"), (3.0, "held")):
            free = cand("free", load=0, cap=8, tok_s=60.0, prefill_s=prefill_s)
            assert sched.order("least_loaded", "k", [held, free])[0] == first, prefill_s

    def test_with_no_free_slot_anywhere_a_prompt_waits_at_the_router(self) -> None:
        """Every slot busy: a request with a prompt waits at the router like any other (the
        wider choice is only among nodes while one has a free slot)."""
        cands = [
            cand(f"n{i}", load=4, own_in_flight=4, cap=8, tok_s=60.0, prefill_s=float(i))
            for i in range(4)
        ]
        assert Scheduler(random.Random(9)).order("least_loaded", "k", cands) == []


class TestReplicaBacklog:
    """Behind several router replicas a backlog is pooled through the nodes' queues."""

    def test_backlog_head_queues_at_a_node_only_behind_replicas(self) -> None:
        """Every slot busy: one router keeps its queue (it sees every completion), a replica
        with a long backlog sends the head to the node that frees a slot soonest, and a
        replica with one waiter keeps it."""

        def full(replicas: int) -> list[Candidate]:
            return [cand(n, load=5, cap=8, own_in_flight=1, tok_s=30.0, replicas=replicas)
                    for n in ("a", "b")]  # fmt: skip

        sched = Scheduler(random.Random(1))
        assert sched.order("least_loaded", "k", full(1), waiting=10) == []
        assert sched.order("least_loaded", "k", full(4), waiting=10) != []
        assert sched.order("least_loaded", "k", full(4), waiting=1) == []


class TestSpreads:
    """Load-blind policies spread by their rule."""

    def test_weighted_round_robin_follows_weights(self) -> None:
        """Weights 1:2:3 give first places in that proportion, exactly over a cycle."""
        cands = [cand("a", weight=1.0), cand("b", weight=2.0), cand("c", weight=3.0)]
        counts = firsts(Scheduler(random.Random(8)), "weighted_round_robin", cands, 600)
        assert counts == {"a": 100, "b": 200, "c": 300}

    def test_random_is_uniform(self) -> None:
        """Random gives each of four nodes about a quarter of first places."""
        cands = [cand(n) for n in "abcd"]
        counts = firsts(Scheduler(random.Random(9)), "random", cands, 4000)
        assert all(900 < counts[n] < 1100 for n in "abcd")

    @pytest.mark.parametrize("policy", ["least_loaded", "power_of_two", "least_connections"])
    def test_ties_are_broken_at_random(self, policy: str) -> None:
        """Equal nodes share first places, whichever comes first in the list."""
        cands = [cand(n) for n in "abc"]
        counts = firsts(Scheduler(random.Random(10)), policy, cands, 3000)
        assert all(850 < counts[n] < 1150 for n in "abc")

    def test_power_of_two_prefers_the_lighter_of_two(self) -> None:
        """With one heavily loaded node among four, it wins only when both draws are it...
        which never happens (draws are distinct), so it is never first."""
        cands = [cand("heavy", load=3)] + [cand(n) for n in "abc"]
        counts = firsts(Scheduler(random.Random(11)), "power_of_two", cands, 2000)
        assert counts["heavy"] == 0
        assert all(550 < counts[n] < 780 for n in "abc")


class TestSticky:
    """Sticky keeps a session on one node and falls back when that node is full."""

    def test_same_key_same_node_and_keys_spread(self) -> None:
        """A key always maps to the same node; many keys spread over all nodes."""
        cands = [cand(f"n{i}", cap=4) for i in range(8)]
        sched = Scheduler(random.Random(12))
        homes = {k: sched.order("sticky", "g", cands, affinity=k)[0] for k in map(str, range(800))}
        assert all(sched.order("sticky", "g", cands, affinity=k)[0] == homes[k] for k in "0123")
        assert all(60 < c < 140 for c in Counter(homes.values()).values())

    def test_consistent_when_a_node_leaves(self) -> None:
        """Removing one node moves only the keys that lived on it."""
        cands = [cand(f"n{i}") for i in range(10)]
        sched = Scheduler(random.Random(13))
        before = {k: sched.order("sticky", "g", cands, affinity=k)[0] for k in map(str, range(500))}
        rest = [c for c in cands if c.node_id != "n3"]
        after = {k: sched.order("sticky", "g", rest, affinity=k)[0] for k in before}
        moved = {k for k in before if before[k] != after[k]}
        assert moved == {k for k, n in before.items() if n == "n3"}

    def test_falls_back_when_home_is_full(self) -> None:
        """When the session's node is at its cap the request goes elsewhere."""
        cands = [cand(f"n{i}", cap=4) for i in range(4)]
        sched = Scheduler(random.Random(14))
        home = sched.order("sticky", "g", cands, affinity="sess")[0]
        full = [cand(c.node_id, load=4, cap=4) if c.node_id == home else c for c in cands]
        assert sched.order("sticky", "g", full, affinity="sess")[0] != home


class TestEstimates:
    """Load estimates use the router's exact count and a report's age and replicas."""

    def test_array_estimate_matches_scalar(self) -> None:
        """The vectorised estimate agrees with the scalar one, stale rows included."""
        rng = np.random.default_rng(1)
        own, at, rep = (rng.integers(0, 6, 200).astype(float) for _ in range(3))
        age = rng.uniform(0, 6, 200)
        load, stale = estimate_loads(own, at, rep, age, 3.0)
        for i in range(200):
            assert load[i] == estimate_load(int(own[i]), int(at[i]), int(rep[i]), age[i], 3.0)
            assert stale[i] == (age[i] > 3.0)

    def test_replicas_share_free_slots(self) -> None:
        """Four replicas each claim a share of a node's free slots: over many reports the
        claims add up to the free slots on average."""
        jitter = np.random.default_rng(2).random(4000)
        zeros = np.zeros(4000)
        load, _ = estimate_loads(
            zeros, zeros, np.ones(4000), zeros, 3.0, slots=np.full(4000, 4.0), replicas=4,
            jitter=jitter,
        )  # fmt: skip
        claimed = 4.0 - load  # free slots this replica may fill
        assert abs(claimed.mean() * 4 - 3.0) < 0.1

    def test_claimed_share_counts_as_partly_taken_with_age(self) -> None:
        """A replica's claim on a reported free slot stays open but weighs more as the report
        ages (the replica that freed it may have refilled it); scalar and array agree."""
        loads = [estimate_load(0, 0, 3, age, 3.0, slots=4, replicas=4, jitter=0.99)
                 for age in (0.0, 1.0, 2.0)]  # fmt: skip
        assert loads[0] == 3.0
        assert 3.0 < loads[1] < loads[2] < 4.0
        array, _ = estimate_loads(
            np.zeros(3), np.zeros(3), np.full(3, 3.0), np.array([0.0, 1.0, 2.0]), 3.0,
            slots=np.full(3, 4.0), replicas=4, jitter=np.full(3, 0.99),
        )  # fmt: skip
        assert np.allclose(array, loads)

    def test_speed_from_aggregate_rate(self) -> None:
        """The node's output rate over its streams gives a batch-1 per-stream speed."""
        assert batch_one_speed(None, 3) is None
        assert batch_one_speed(120.0, 0) is None
        speed = batch_one_speed(120.0, 3)
        assert speed is not None
        assert 40.0 < speed < 50.0

    def test_speed_is_shared_by_the_windows_mean_streams(self) -> None:
        """A node that streamed four at a time all through its rate's window and has one left
        at the moment it reports is as fast per stream as its peers, not four times faster
        (every replica would herd onto it)."""
        registry = Registry("least_loaded", 3)
        model = (ModelReport("m", loaded=True, max_parallel=8),)
        speeds = []
        for name, in_flight in (("busy-then-quiet", 1), ("steady", 4)):
            node, _ = registry.register("g", Registration(name=name, base_url="http://x"), 0.0)
            report = LoadReport(1, 0.0, "vllm", "ok", in_flight, models=model,
                                output_tokens_per_s=400.0, mean_in_flight=4.0)  # fmt: skip
            registry.apply_report(node, report, 0.0)
            assert node.speed_sample is not None
            speeds.append(batch_one_speed(*node.speed_sample))
        assert speeds[0] == speeds[1] == pytest.approx(115.0)

    def test_a_report_without_the_mean_divides_by_its_count(self) -> None:
        """An older agent's report (no mean in flight): the rate over the count it reports."""
        registry = Registry("least_loaded", 3)
        node, _ = registry.register("g", Registration(name="n", base_url="http://x"), 0.0)
        model = (ModelReport("m", loaded=True, max_parallel=8),)
        report = LoadReport(1, 0.0, "vllm", "ok", 2, models=model, output_tokens_per_s=200.0)
        registry.apply_report(node, report, 0.0)
        assert node.speed_sample == (200.0, 2)


def _node_with(models: tuple[ModelReport, ...], free_gib: float, total_gib: float) -> Registry:
    registry = Registry("least_loaded", 3)
    node, _ = registry.register("g", Registration(name="n", base_url="http://x"), 0.0)
    gpu = GpuReport(0, "GPU", int(total_gib * GIB), int((total_gib - free_gib) * GIB))
    report = LoadReport(1, 0.0, "ollama", "ok", 0, models=models, gpus=(gpu,))
    registry.apply_report(node, report, 0.0)
    return registry


class TestResidency:
    """candidate_for turns a report into one of four residency cases."""

    @pytest.mark.parametrize(
        ("free", "total", "expected"),
        [(24.0, 24.0, "load"), (4.0, 24.0, "evict"), (4.0, 6.0, None)],
    )
    def test_cold_cases(self, free: float, total: float, expected: str | None) -> None:
        """Fits free VRAM: its load time; fits only by evicting: more; cannot fit: no
        candidate."""
        model = ModelReport(
            "m", loaded=False, vram_bytes=8 * GIB, size_bytes=5 * GIB, max_parallel=4
        )
        registry = _node_with((model,), free, total)
        node = next(iter(registry.groups["g"].nodes.values()))
        got = candidate_for(node, "m", 3, 0.5, 3.0, cap_factor=1.0)
        if expected is None:
            assert got is None
            return
        assert got is not None
        assert got.cap == 4
        unknown = _node_with((dataclasses.replace(model, max_parallel=None),), free, total)
        free_node = next(iter(unknown.groups["g"].nodes.values()))
        uncapped = candidate_for(free_node, "m", 3, 0.5, 3.0, cap_factor=1.0)
        assert uncapped is not None
        assert uncapped.cap == 0  # slots unknown (vLLM, TGI): no cap on a guess
        assert not got.loaded
        load_s = 1.0 + 5 * GIB / 1.5e9
        want = load_s if expected == "load" else load_s * EVICT_FACTOR
        assert got.cold_s == pytest.approx(want)

    def test_loaded_model_costs_nothing(self) -> None:
        """A loaded model has no cold cost; an unknown size gets the default load time."""
        registry = _node_with(
            (ModelReport("hot", loaded=True), ModelReport("cold", loaded=False)), 10, 24
        )
        node = next(iter(registry.groups["g"].nodes.values()))
        hot = candidate_for(node, "hot", 3, 0.5, 3.0)
        cold = candidate_for(node, "cold", 3, 0.5, 3.0)
        assert hot is not None
        assert hot.cold_s == 0.0
        assert hot.cap == 0
        assert cold is not None
        assert cold.cold_s == DEFAULT_LOAD_S


class TestTable:
    """The column table is the same decision as the candidate list."""

    def test_rank_on_table_matches_order(self) -> None:
        """Ranking a table built from candidates gives the order of those candidates."""
        rng = random.Random(15)
        cands = [
            cand(f"n{i}", load=rng.randint(0, 6), tok_s=rng.uniform(10, 90)) for i in range(60)
        ]
        table = CandidateTable.from_candidates(cands)
        rows = Scheduler(random.Random(16)).rank("least_loaded", "k", table, limit=5)
        order = Scheduler(random.Random(16)).order("least_loaded", "k", cands, limit=5)
        assert [table.ids[i] for i in rows] == order
        assert not np.isnan(table.tok_s).any()
