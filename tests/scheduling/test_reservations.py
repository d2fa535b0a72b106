"""Reservation accounting under any interleaving, on the real Registry and Reservation."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node_protocol.wire import LoadReport, ModelReport, Registration
from router.registry import Node, Registry, Reservation
from router.scheduling import POLICIES, Scheduler, candidate_for

MODELS = ("m1", "m2")
ALIAS = {name: model for model in MODELS for name in (model, f"{model}:latest")}
NAMES = ("a", "b", "c")
LOADED = {"m1": True, "m2": False}  # m2 is cold unless this router has requests for it


def _report(seq: int, in_flight: int, waiting: int | None) -> LoadReport:
    models = tuple(
        ModelReport(m, loaded=LOADED[m], aliases=(f"{m}:latest",), max_parallel=2) for m in MODELS
    )
    return LoadReport(
        seq, 0.0, "vllm", "ok", in_flight, models=models, queue_waiting=waiting, queue_running=0
    )


class Flight:
    """One request the machine has sent (for ``asked``, a model's id or alias): its
    reservation and whether bytes flowed."""

    def __init__(self, reservation: Reservation, asked: str) -> None:
        self.reservation = reservation
        self.asked = asked
        self.streaming = False
        self.done = False


class ReservationMachine(RuleBasedStateMachine):
    """choose / first byte / finish / client gone / busy answer / node gone / report arrives,
    in any order: every node's count equals its open reservations, per model too (under the
    model's id, whichever name a request asked), and never goes negative; the load the
    scheduler sees is never below this router's own count; a cold model is warm where this
    router has requests for it."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry("least_loaded", 3)
        self.registry.ensure_group("g").declared = True  # as configured: stays when emptied
        self.scheduler = Scheduler(random.Random(0))
        self.flights: list[Flight] = []
        self.retired: list[Node] = []  # removed nodes that may still hold reservations
        self.now = 0.0
        self.seq = 0
        for name in NAMES:
            self._register(name)

    def _register(self, name: str) -> None:
        node, _ = self.registry.register("g", Registration(name=name, base_url="http://x"), 0.0)
        self.seq += 1
        self.registry.apply_report(node, _report(self.seq, 0, None), self.now)

    def _live(self) -> list[Node]:
        return list(self.registry.groups["g"].nodes.values())

    @rule(model=st.sampled_from(sorted(ALIAS)), policy=st.sampled_from(POLICIES), cap=st.booleans())
    def choose(self, model: str, policy: str, cap: bool) -> None:
        """Order the candidates and reserve a slot on the first, as the proxy does."""
        group = self.registry.groups["g"]
        cands = [
            c
            for node in group.nodes_serving(model)
            if (c := candidate_for(node, model, 3, self.now, 3.0, cap_factor=2.0 if cap else None))
        ]
        order = self.scheduler.order(policy, f"g/{ALIAS[model]}", cands, limit=3, affinity="s")
        if order:
            self.flights.append(Flight(Reservation(group.nodes[order[0]], model), model))

    @precondition(lambda self: any(not f.done for f in self.flights))
    @rule(pick=st.integers(0, 1000))
    def first_byte(self, pick: int) -> None:
        open_ = [f for f in self.flights if not f.done]
        open_[pick % len(open_)].streaming = True

    @precondition(lambda self: bool(self.flights))
    @rule(pick=st.integers(0, 1000), again=st.booleans())
    def finish_or_client_gone(self, pick: int, again: bool) -> None:
        """The response ends, or the client leaves (before or after the first byte); a
        release may run twice (the finally of a cancelled handler)."""
        flight = self.flights[pick % len(self.flights)]
        flight.reservation.release()
        if again:
            flight.reservation.release()
        flight.done = True

    @precondition(lambda self: any(not f.done and not f.streaming for f in self.flights))
    @rule(pick=st.integers(0, 1000), count=st.integers(0, 8))
    def busy_answer(self, pick: int, count: int) -> None:
        """Behind router replicas, the node's agent answers a slot check busy before any
        byte: the proxy releases the slot, then notes the agent's count."""
        waiting = [f for f in self.flights if not f.done and not f.streaming]
        flight = waiting[pick % len(waiting)]
        flight.reservation.release()
        flight.done = True
        self.registry.note_busy(flight.reservation.node, count, self.now)

    @rule(name=st.sampled_from(NAMES), back=st.booleans())
    def node_gone(self, name: str, back: bool) -> None:
        """The node deregisters (its requests still end later) and may register again."""
        node = next((n for n in self._live() if n.name == name), None)
        if node is not None:
            self.registry.remove("g", node.node_id)
            self.retired.append(node)
        if back and not any(n.name == name for n in self._live()):
            self._register(name)

    @rule(
        name=st.sampled_from(NAMES),
        in_flight=st.integers(0, 8),
        waiting=st.none() | st.integers(0, 4),
        dt=st.floats(0.0, 5.0),
    )
    def report_arrives(self, name: str, in_flight: int, waiting: int | None, dt: float) -> None:
        self.now += dt
        node = next((n for n in self._live() if n.name == name), None)
        if node is not None:
            self.seq += 1
            self.registry.apply_report(node, _report(self.seq, in_flight, waiting), self.now)

    @invariant()
    def counts_match_open_reservations(self) -> None:
        for node in {id(n): n for n in [*self._live(), *self.retired]}.values():
            mine = [f for f in self.flights if not f.done and f.reservation.node is node]
            assert node.in_flight == len(mine) >= 0
            per_model = Counter(ALIAS[f.asked] for f in mine)
            assert node.in_flight_by_model == dict(per_model)

    @invariant()
    def load_never_below_own(self) -> None:
        for node in self._live():
            for model in MODELS:
                for replicas in (1, 4):
                    c = candidate_for(node, model, 3, self.now, 3.0, replicas=replicas)
                    assert c is None or c.load >= node.in_flight >= 0

    @invariant()
    def own_requests_keep_a_model_warm(self) -> None:
        for node in self._live():
            for name, model in ALIAS.items():
                c = candidate_for(node, name, 3, self.now, 3.0)
                warm = LOADED[model] or node.in_flight_by_model.get(model, 0) > 0
                assert c is None or (c.cold_s == 0.0) == warm

    def teardown(self) -> None:
        for flight in self.flights:
            flight.reservation.release()
        for node in [*self._live(), *self.retired]:
            assert node.in_flight == 0
            assert not node.in_flight_by_model


TestReservationMachine = ReservationMachine.TestCase
TestReservationMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
