"""The pure scheduling module: load estimates, policies, reservation accounting."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.wire import LoadReport, ModelReport, Registration
from router.registry import Node, Registry, Reservation
from router.scheduling import Candidate, Scheduler, estimate_load


def _cand(node_id: str, load: float = 0, slots: int = 4, **kw: object) -> Candidate:
    base: dict[str, object] = {
        "node_id": node_id,
        "degraded": False,
        "weight": 1.0,
        "loaded": True,
        "load": load,
        "slots": slots,
        "own_in_flight": 0,
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


class TestEstimateLoad:
    """The load estimate combines the agent's report with the router's exact own count."""

    def test_own_changes_since_report_are_added(self) -> None:
        """Two reservations made since a report showing 3 in flight make 5."""
        assert estimate_load(5, 3, 3, 0.1, 3.0) == 5
        assert estimate_load(2, 0, 3, 0.1, 3.0) == 5

    def test_stale_report_is_unknown_not_zero(self) -> None:
        """An old report is ignored: only the router's own count is left."""
        assert estimate_load(1, 0, 40, 10.0, 3.0) == 1

    def test_never_below_own_count(self) -> None:
        """Even if a report undercounts, the router's own reservations are a floor."""
        assert estimate_load(4, 6, 0, 0.1, 3.0) == 4


class TestPolicies:
    """Policies are judged by the spread of many decisions."""

    def test_least_loaded_prefers_free_slots(self) -> None:
        """The node with the lowest load per slot comes first; the rest follow as failovers."""
        order = Scheduler(random.Random(1)).order(
            "least_loaded", "g/m", [_cand("a", load=3), _cand("b", load=1), _cand("c", load=2)]
        )
        assert order == ["b", "c", "a"]

    def test_ties_are_broken_at_random(self) -> None:
        """Equal nodes each get about a third of first choices, not always the first listed."""
        sched = Scheduler(random.Random(7))
        cands = [_cand("a"), _cand("b"), _cand("c")]
        firsts = Counter(sched.order("least_loaded", "g/m", cands)[0] for _ in range(3000))
        assert all(850 < firsts[n] < 1150 for n in "abc")

    def test_cold_and_degraded_nodes_rank_lower(self) -> None:
        """A node that must load the model, or is degraded, loses to an equal healthy one."""
        sched = Scheduler(random.Random(3))
        assert (
            sched.order("least_loaded", "k", [_cand("cold", loaded=False), _cand("hot")])[0]
            == "hot"
        )
        assert (
            sched.order("least_loaded", "k", [_cand("sick", degraded=True), _cand("ok")])[0] == "ok"
        )

    def test_weight_scales_capacity(self) -> None:
        """A node of weight 2 with 3 in flight still beats a weight-1 node with 2."""
        order = Scheduler(random.Random(1)).order(
            "least_loaded", "k", [_cand("w1", load=2), _cand("w2", load=3, weight=2.0)]
        )
        assert order[0] == "w2"

    def test_round_robin_rotates(self) -> None:
        """Round robin hands out first places in turn."""
        sched = Scheduler(random.Random(1))
        cands = [_cand("a"), _cand("b"), _cand("c")]
        assert [sched.order("round_robin", "k", cands)[0] for _ in range(6)] == list("abcabc")

    def test_least_connections_counts_own(self) -> None:
        """Least connections picks the node with fewest of this router's requests."""
        order = Scheduler(random.Random(1)).order(
            "least_connections", "k", [_cand("a", own_in_flight=2), _cand("b", own_in_flight=1)]
        )
        assert order[0] == "b"


def _node(registry: Registry, name: str) -> Node:
    node, _ = registry.register("g", Registration(name=name, base_url="http://x"), 0.0)
    return node


class TestReservations:
    """Slots are counted once and released once, whatever happens."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["reserve", "release", "report"]),
                st.integers(0, 2),
                st.sampled_from(["m1", "m2"]),
            ),
            max_size=60,
        )
    )
    def test_counts_match_open_reservations(self, ops: list[tuple[str, int, str]]) -> None:
        """Under any interleaving of reserve / release (even repeated) / report, each node's
        count equals its open reservations and never goes negative."""
        registry = Registry("least_loaded", 3)
        nodes = [_node(registry, f"n{i}") for i in range(3)]
        held: list[Reservation] = []
        released: list[Reservation] = []
        for op, idx, model in ops:
            if op == "reserve":
                held.append(Reservation(nodes[idx], model))
            elif op == "release" and (held or released):
                pool = held if held and (idx % 2 == 0 or not released) else released
                r = pool.pop(idx % len(pool)) if pool is held else pool[idx % len(pool)]
                r.release()
                if pool is held:
                    released.append(r)
            elif op == "report":
                rep = LoadReport(
                    seq=1,
                    sent_at=0.0,
                    backend_kind="vllm",
                    backend_health="ok",
                    in_flight=idx,
                    models=(ModelReport(id=model, loaded=True),),
                )
                registry.apply_report(nodes[idx], rep, 1.0)
            for node in nodes:
                mine = [r for r in held if r.node is node]
                assert node.in_flight == len(mine) >= 0
                assert sum(node.in_flight_by_model.values()) == node.in_flight
        for r in held:
            r.release()
        assert all(n.in_flight == 0 and not n.in_flight_by_model for n in nodes)


class TestBreaker:
    """The circuit breaker opens on a failed connection, for longer each time, up to a cap."""

    def test_backoff_is_capped_after_many_failures(self) -> None:
        """Thousands of failures in a row keep the cooldown at the cap (and never overflow)."""
        from router.registry import BREAKER_MAX_S

        registry = Registry("least_loaded", 3)
        node = _node(registry, "n")
        registry.connection_failed(node, 100.0)
        assert not node.breaker_allows(100.5)
        assert node.breaker_allows(101.0)  # half-open after 1 s: one probe
        for _ in range(5000):
            registry.connection_failed(node, 100.0)
        assert not node.breaker_allows(100.0 + BREAKER_MAX_S - 0.1)
        assert node.breaker_allows(100.0 + BREAKER_MAX_S)
        registry.connection_ok(node)
        assert node.breaker_allows(100.0)

    def test_agent_reporting_its_backend_healthy_ends_the_cooldown(self) -> None:
        """Once the node's agent reports its backend ok again (an engine restarted behind it),
        the node is tried at once, one request at a time, not after the rest of the cooldown."""
        registry = Registry("least_loaded", 3)
        node = _node(registry, "n")
        for _ in range(4):
            registry.connection_failed(node, 100.0)  # an 8 s cooldown
        ok = LoadReport(
            seq=1, sent_at=0.0, backend_kind="llamacpp", backend_health="ok", in_flight=0
        )
        registry.apply_report(node, ok, 101.0, from_agent=False)  # the router's own check
        assert not node.breaker_allows(101.0)
        registry.apply_report(node, ok, 101.0)
        assert node.breaker_allows(101.0)
        node.in_flight = 1  # half-open: the one request that proves it
        assert not node.breaker_allows(101.0)
