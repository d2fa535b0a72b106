"""Rosters keep candidates between requests: their decisions are those of candidates built
afresh for each request, under any interleaving of slots, reports, busy answers, breakers and
changes of the model's expected answer length."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node_protocol.wire import GpuReport, LoadReport, ModelReport, Registration
from router.candidates import candidate_for
from router.registry import Node, Registry, Reservation
from router.roster import MAX_ROWS, CandidateRules, Roster, Rosters
from router.scheduling import POLICIES, Scheduler
from router.scoring import DEFAULT_PARAMS

GIB = 2**30
NAMES = ("a", "b", "c", "d")
MODELS = ("m1", "m2")
STALE_AFTER_S = 3.0


def _report(seq: int, in_flight: int, running: int, rate: float, loaded: bool) -> LoadReport:
    models = (
        ModelReport("m1", loaded=loaded, vram_bytes=8 * GIB, size_bytes=5 * GIB, max_parallel=2),
        ModelReport("m2", loaded=True, max_parallel=None),
    )
    gpu = GpuReport(0, "GPU", 24 * GIB, (20 if seq % 3 else 4) * GIB)
    return LoadReport(
        seq, 0.0, "vllm", "ok" if seq % 7 else "degraded", in_flight, models=models,
        gpus=(gpu,), queue_running=running, output_tokens_per_s=rate,
    )  # fmt: skip


class RosterMachine(RuleBasedStateMachine):
    """Reserve, release, report (the same report again, too), busy answers, failed
    connections, drains and time going by; after each step, every policy's decision from the
    roster equals the decision from candidates made afresh with the same random state."""

    max_rows = MAX_ROWS  # the rosters keep lists (a few nodes)

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry("least_loaded", 3)
        self.registry.ensure_group("g").declared = True
        self.now = 0.0
        self.seq = 0
        self.held: list[Reservation] = []
        self.seed = 0
        for name in NAMES:
            node, _ = self.registry.register("g", Registration(name, f"http://{name}"), 0.0)
            self._report_to(node, 1, 1, 40.0, True)
        self.nodes = sorted(self.registry.groups["g"].nodes.values(), key=lambda n: n.node_id)
        self.replicas = 1
        self.expected_tokens = DEFAULT_PARAMS.expected_tokens
        self.rosters: dict[tuple[str, int], Roster] = {}

    def _report_to(
        self, node: Node, in_flight: int, running: int, rate: float, loaded: bool
    ) -> None:
        self.seq += 1
        report = _report(self.seq, in_flight, running, rate, loaded)
        self.registry.apply_report(node, report, self.now)

    def _roster(self, model: str, replicas: int) -> Roster:
        roster = self.rosters.get((model, replicas))
        if roster is None:
            rules = CandidateRules(3, STALE_AFTER_S, cap_factor=2.0, replicas=replicas,
                                   max_rows=self.max_rows)  # fmt: skip
            roster = self.rosters[model, replicas] = Roster(self.nodes, (model,), rules)
        return roster

    @rule(node=st.sampled_from(range(4)), model=st.sampled_from(MODELS))
    def reserve(self, node: int, model: str) -> None:
        self.held.append(Reservation(self.nodes[node], model))

    @precondition(lambda self: bool(self.held))
    @rule(pick=st.integers(0, 100))
    def release(self, pick: int) -> None:
        self.held.pop(pick % len(self.held)).release()

    @rule(
        node=st.sampled_from(range(4)),
        in_flight=st.integers(0, 6),
        running=st.integers(0, 3),
        rate=st.sampled_from([0.0, 35.0, 40.0, 90.0]),
        loaded=st.booleans(),
        again=st.booleans(),
    )
    def report(self, node: int, in_flight: int, running: int, rate: float, loaded: bool,
               again: bool) -> None:  # fmt: skip
        target = self.nodes[node]
        if again and target.report is not None:  # the very same report once more
            self.registry.apply_report(target, target.report, self.now)
            return
        self._report_to(target, in_flight, running, rate, loaded)

    @rule(node=st.sampled_from(range(4)), count=st.integers(0, 5))
    def busy_answer(self, node: int, count: int) -> None:
        self.registry.note_busy(self.nodes[node], count, self.now)

    @rule(node=st.sampled_from(range(4)), ok=st.booleans())
    def connection(self, node: int, ok: bool) -> None:
        if ok:
            self.registry.connection_ok(self.nodes[node])
        else:
            self.registry.connection_failed(self.nodes[node], self.now)

    @rule(node=st.sampled_from(range(4)), draining=st.booleans())
    def drain(self, node: int, draining: bool) -> None:
        self.nodes[node].draining = draining

    @rule(dt=st.floats(0.0, 4.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(replicas=st.sampled_from([1, 3]))
    def replicas_change(self, replicas: int) -> None:
        self.replicas = replicas

    @rule(tokens=st.sampled_from([8.0, 64.0, 256.0]))
    def answers_change_length(self, tokens: float) -> None:
        self.expected_tokens = tokens

    @invariant()
    def counts_follow_the_nodes(self) -> None:
        for roster in self.rosters.values():
            for i, node in enumerate(roster.nodes):
                assert roster.own[i] == node.in_flight
                assert roster.own_model[i] == node.in_flight_by_model.get(roster.keys[i], 0)

    @invariant()
    def decides_as_afresh(self) -> None:
        self.seed += 1
        # a prefill that differs between the nodes, or one alike on all (a prompt none holds)
        step = 0.5 if self.seed % 3 else 0.0
        prefill = [0.4 + step * ((self.seed + i) % 3) for i in range(len(self.nodes))]
        for model in MODELS:
            roster = self._roster(model, self.replicas)
            roster.expect(self.expected_tokens)
            params = dataclasses.replace(DEFAULT_PARAMS, expected_tokens=self.expected_tokens)
            for policy in POLICIES:
                for prefill_s in (None, prefill):
                    kept = Scheduler(random.Random(self.seed))
                    fresh = Scheduler(random.Random(self.seed), params)
                    rows = roster.decide(kept, policy, f"g/{model}", self.now, limit=3,
                                         affinity="s", waiting=1, prefill_s=prefill_s)  # fmt: skip
                    want = self._afresh(fresh, policy, model, prefill_s)
                    got = None if rows is None else [roster.ids[i] for i in rows]
                    assert got == want, (policy, model, prefill_s)

    def _afresh(
        self, scheduler: Scheduler, policy: str, model: str, prefill_s: list[float] | None
    ) -> list[str] | None:
        """The decision as made before rosters: candidates built for the request."""
        cands = []
        for node in self.nodes:
            if not node.breaker_allows(self.now):
                continue  # as the router left such nodes out before it made candidates
            c = candidate_for(
                node, model, 3, self.now, STALE_AFTER_S, cap_factor=2.0, replicas=self.replicas
            )
            if c is not None:
                prefill = 0.0 if prefill_s is None else prefill_s[self.nodes.index(node)]
                cands.append(dataclasses.replace(c, prefill_s=prefill))
        if not cands:
            return None
        return scheduler.order(policy, f"g/{model}", cands, limit=3, affinity="s", waiting=1)

    def teardown(self) -> None:
        for reservation in self.held:
            reservation.release()


TestRosterMachine = RosterMachine.TestCase
TestRosterMachine.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)


class ColumnRosterMachine(RosterMachine):
    """The same with the rosters kept as numpy columns, as over a fleet, however few the
    nodes: a kept view of the columns (:class:`router.kept_columns.KeptColumns`) decides as
    columns made afresh."""

    max_rows = 0


TestColumnRosterMachine = ColumnRosterMachine.TestCase
TestColumnRosterMachine.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)


def _served(registry: Registry, group: str, name: str) -> Node:
    node, _ = registry.register(group, Registration(name, f"http://{name}"), 0.0)
    registry.apply_report(node, _report(1, 0, 0, 0.0, True), 0.0)
    return node


class TestRostersFollowTheGroups:
    """The router's rosters are made again when who serves what changes."""

    def test_a_node_that_comes_or_goes_is_in_the_next_roster(self) -> None:
        """A node added to, or removed from, a group is in, or out of, the roster the next
        request gets."""
        registry = Registry("least_loaded", 3)
        rosters = Rosters(CandidateRules(3, STALE_AFTER_S))
        first = _served(registry, "x", "a")
        group = registry.groups["x"]
        assert rosters.get(group, "m1", ("m1",), None).nodes == [first]
        second = _served(registry, "x", "b")
        assert {n.name for n in rosters.get(group, "m1", ("m1",), None).nodes} == {"a", "b"}
        registry.remove("x", second.node_id)
        assert rosters.get(group, "m1", ("m1",), None).nodes == [first]
        assert second.watchers == []

    def test_a_group_made_again_gets_a_roster_of_its_own_nodes(self) -> None:
        """A group that registrations make again, after its last node left, gets a roster of
        its new nodes, even when its index has changed as often as the old one's."""
        registry = Registry("least_loaded", 3)
        rosters = Rosters(CandidateRules(3, STALE_AFTER_S))
        first = _served(registry, "x", "a")
        assert rosters.get(registry.groups["x"], "m1", ("m1",), None).nodes == [first]
        registry.remove("x", first.node_id)
        assert "x" not in registry.groups
        again = _served(registry, "x", "c")
        assert rosters.get(registry.groups["x"], "m1", ("m1",), None).nodes == [again]

    def test_a_node_that_gains_an_agent_joins_the_surfaces_only_agents_translate(self) -> None:
        """A node first heard without an agent is left out of a roster for a surface that only
        an agent translates to its kind, and is in the next roster once its agent reports."""
        registry = Registry("least_loaded", 3)
        rosters = Rosters(CandidateRules(3, STALE_AFTER_S))
        node, _ = registry.register("x", Registration("a", "http://a"), 0.0)
        registry.apply_report(node, _report(1, 0, 0, 0.0, True), 0.0, from_agent=False)
        group = registry.groups["x"]
        kinds, bare = frozenset({"vllm", "ollama"}), frozenset({"llamacpp"})
        assert rosters.get(group, "m1", ("m1",), kinds, bare).nodes == []
        assert rosters.get(group, "m1", ("m1",), kinds).nodes == [node]
        registry.apply_report(node, _report(2, 0, 0, 0.0, True), 1.0)
        assert rosters.get(group, "m1", ("m1",), kinds, bare).nodes == [node]


def test_a_decision_with_a_prompt_term_leaves_the_kept_choice_right() -> None:
    """Speeds are filled among the open rows: a decision with a prompt term fills them among
    its wider set (a full node under its cap too), which changes them; the next decision
    without one, after a slot moved, still scores as if afresh."""
    machine = RosterMachine()
    try:
        for node, (in_flight, running, rate) in enumerate(
            [(0, 1, 20.0), (0, 1, 30.0), (6, 3, 270.0), (0, 1, 40.0)]
        ):
            machine.report(node, in_flight, running, rate, True, False)
        for _ in range(6):  # the reported loads of nodes 0, 1 and 3 fall towards none
            for node in (0, 1, 3):
                machine.report(node, 0, 0, 0.0, True, False)
        machine.reserve(1, "m1")
        machine.reserve(3, "m1")
        for _ in range(6):  # node 0's slot taken and freed: its score alone is made again
            machine.decides_as_afresh()  # without, then with, the prompt term: each policy
            machine.reserve(0, "m1")
            machine.decides_as_afresh()
            machine.release(len(machine.held) - 1)
    finally:
        machine.teardown()


@pytest.mark.parametrize("machine_class", [RosterMachine, ColumnRosterMachine])
def test_a_kept_view_defers_to_the_columns_once_the_best_open_node_is_cold(
    machine_class: type[RosterMachine],
) -> None:
    """A slot taken on the best open node makes a node that must load the model the best,
    while full nodes have it loaded: the kept view (of the rows, with a prompt term or not, or
    of the columns) leaves the choice to the column path, which waits for a full node, as
    columns made afresh do."""
    machine = machine_class()
    try:
        reports = [(6, 3, 120.0, True), (0, 1, 40.0, False), (0, 1, 7.0, True), (6, 3, 120.0, True)]
        for node, (in_flight, running, rate, loaded) in enumerate(reports):
            machine.report(node, in_flight, running, rate, loaded, False)
        for _ in range(6):  # the reported loads of nodes 1 and 2 fall towards none
            machine.report(1, 0, 0, 0.0, False, False)
            machine.report(2, 0, 0, 0.0, True, False)
        machine.decides_as_afresh()
        machine.reserve(2, "m1")
        machine.decides_as_afresh()
        rows = machine._roster("m1", 1).decide(
            Scheduler(random.Random(1)), "least_loaded", "g/m1", machine.now, limit=3, waiting=1
        )
        assert rows == []  # the case this pins down: a wait for a full node that has it loaded
    finally:
        machine.teardown()
