"""The discrete-event loop: arrivals, stream completions, model loads and agent reports.

Arrivals come from the pre-drawn :class:`~bench.sim.workload.Requests` (request ``i`` goes to
replica ``i % replicas``); a conversation's later turns arrive when the turn before them has
ended, after its think time. Everything else is a heap of ``(time, seq, kind, a, b)``. Every
node reports every ``report_interval_s`` (nodes staggered over ``PHASES`` slices of the
interval) and each replica receives the report ``report_delay_s`` later; where requests are
conversation turns, the report carries the agent's map of the node's prompt cache.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.sim.agentic import Agents
from bench.sim.clairvoyant import Clairvoyant
from bench.sim.cluster import PREFILL_RATIO, NodeSpec, engines_for
from bench.sim.nodes import Fleet
from bench.sim.prefix import Change
from bench.sim.routers import Replica, Snapshot, snapshot
from bench.sim.workload import Floats, Ints, Requests, Stream, generate
from router.admission import AdmissionLimits

PHASES = 10
COMPLETE, LOADED, TICK, DELIVER, ARRIVE = 0, 1, 2, 3, 4
CLAIRVOYANT = "clairvoyant"  # the reference router (bench.sim.clairvoyant), not a policy

PrefixSnapshot = tuple[int, np.ndarray, list[list[Change]]]  # model, rows, maps' changes


@dataclass(frozen=True, slots=True)
class Setup:
    """A fleet, its traffic and the router deployment in front of it. The traffic is
    ``streams``, or, with ``agents``, agents' sessions (``streams`` is then unused)."""

    nodes: tuple[NodeSpec, ...]
    streams: tuple[Stream, ...]
    requests: int  # about this many, in ``duration_s`` (default: requests / total rate)
    duration_s: float | None = None
    replicas: int = 1
    report_interval_s: float = 1.0
    report_delay_s: float = 0.05
    cap_factor: float = 2.0
    share_room: bool = True  # replicas know how many they are (router_replicas): slot checks
    limits: AdmissionLimits = field(
        default_factory=lambda: AdmissionLimits(max_queue=1_000_000, max_wait_s=3600.0)
    )
    seed: int = 1
    agents: Agents | None = None

    def models(self) -> list[str]:
        return sorted({m for node in self.nodes for m in node.models})

    def draw(self) -> Requests:
        ids = {m: i for i, m in enumerate(self.models())}
        if self.agents is not None:
            return self.agents.draw(self.nodes, self.requests, ids, self.seed)
        duration = self.duration_s or self.requests / sum(s.rate for s in self.streams)
        return generate(self.streams, duration, ids, self.seed)


@dataclass(slots=True)
class Outcome:
    """Per-request results of one run (NaN times for rejected requests). ``requests`` carries
    the arrival times the run gave the conversations' later turns."""

    policy: str
    requests: Requests
    ttft: Floats
    e2e: Floats
    status: Ints
    cold_loads: int
    avoidable_cold_loads: int
    wall_s: float
    cached: Floats  # prompt tokens each request found in its engine's cache
    busy_answers: int = 0  # slot checks the agents answered busy (router replicas only)


class Simulation:
    """One policy (or the clairvoyant reference) over one setup."""

    def __init__(self, setup: Setup, policy: str, reqs: Requests) -> None:
        self.setup, self.reqs = setup, reqs
        self.policy = policy
        clairvoyant = policy == CLAIRVOYANT
        self.replica_count = 1 if clairvoyant else setup.replicas
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = itertools.count()
        # report key -> what the agents sent
        self._snapshots: dict[int, list[Snapshot]] = {}
        self._prefixes: dict[int, tuple[float, list[PrefixSnapshot]]] = {}
        n = len(reqs)
        self.status = [0] * n
        self._open = n
        turns = reqs.turns
        self._next = [-1] * n  # a conversation's next turn
        self._think: list[float] = []
        if turns is not None:
            for rid, before in enumerate(turns.after.tolist()):
                if before >= 0:
                    self._next[before] = rid
            self._think = turns.think.tolist()
        # conversation turns count their prefill once, from their cache hit (see nodes)
        work = reqs.output if turns else reqs.output + reqs.prompt / PREFILL_RATIO
        specs = engines_for(setup.nodes)
        self.fleet = fleet = Fleet(
            setup.nodes, specs, setup.models(), work, reqs.prompt, reqs.session.tolist(),
            self.schedule, self._done, turns,
        )  # fmt: skip
        fleet.arrival = reqs.arrival.tolist()
        fleet.ttft, fleet.finish = [math.nan] * n, [math.nan] * n
        self.replicas = [self._replica(i, clairvoyant) for i in range(self.replica_count)]
        node_of = [np.array([fleet.engines[e].spec.node for e in eids]) for eids in fleet.by_model]
        self._phase_rows = [
            [(mi, np.flatnonzero(nodes % PHASES == p)) for mi, nodes in enumerate(node_of)]
            for p in range(PHASES)
        ]
        for p in range(PHASES):  # everyone starts with a report in hand, staggered after
            if not clairvoyant:
                self._report(-1, p, 0.0)
                self._deliver(-1, 0.0)
                self.schedule(setup.report_interval_s * (p + 1) / PHASES, TICK, p, 0)

    def _replica(self, index: int, clairvoyant: bool) -> Replica:
        setup = self.setup
        return (Clairvoyant if clairvoyant else Replica)(
            self.policy,
            self.fleet,
            self.reqs,
            setup.limits,
            cap_factor=setup.cap_factor,
            report_interval_s=setup.report_interval_s,
            seed=setup.seed * 1000 + index,
            reject=self._reject,
            replicas=self.replica_count if setup.share_room else 1,
        )

    def schedule(self, when: float, kind: int, a: int, b: int) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, a, b))

    def run(self) -> Outcome:
        started = time.perf_counter()
        order, arrivals = self._first_turns()
        heap, fleet, replicas, count = self._heap, self.fleet, self.replicas, self.replica_count
        pop = heapq.heappop
        i, n = 0, len(arrivals)
        while self._open:
            if heap and (i >= n or heap[0][0] <= arrivals[i]):
                now, _, kind, a, b = pop(heap)
                if kind == COMPLETE:
                    fleet.complete(a, b, now)
                elif kind == TICK:
                    self._tick(a, now)
                elif kind == DELIVER:
                    self._deliver(a, now)
                elif kind == ARRIVE:
                    fleet.arrival[a] = now
                    replicas[a % count].offer(a, now)
                else:
                    fleet.loaded(a, now)
                    for replica in replicas:
                        replica.wake_all(now)
            else:
                rid = order[i]
                replicas[rid % count].offer(rid, arrivals[i])
                i += 1
        return self._outcome(time.perf_counter() - started)

    def _first_turns(self) -> tuple[Sequence[int], list[float]]:
        """The requests whose arrivals were drawn up front, in arrival order, and their times."""
        turns, arrival = self.reqs.turns, self.reqs.arrival
        if turns is None:
            return range(len(arrival)), arrival.tolist()
        first = np.flatnonzero(turns.after < 0)
        first = first[np.argsort(arrival[first], kind="stable")]
        return first.tolist(), arrival[first].tolist()

    def _outcome(self, wall_s: float) -> Outcome:
        fleet, reqs = self.fleet, self.reqs
        if reqs.turns is not None:
            reqs = dataclasses.replace(reqs, arrival=np.array(fleet.arrival))
        return Outcome(
            policy=self.policy,
            requests=reqs,
            ttft=np.array(fleet.ttft),
            e2e=np.array(fleet.finish) - reqs.arrival,
            status=np.array(self.status, dtype=np.int64),
            cold_loads=fleet.cold_loads,
            avoidable_cold_loads=fleet.avoidable,
            wall_s=wall_s,
            cached=np.array(fleet.cached),
            busy_answers=sum(r.busy_answers for r in self.replicas),
        )

    def _done(self, rid: int, eid: int, now: float) -> None:
        self._open -= 1
        self.replicas[rid % self.replica_count].done(rid, now)
        self._follow(rid, now)

    def _reject(self, rid: int, status: int, now: float) -> None:
        self._open -= 1
        self.status[rid] = status
        self._follow(rid, now)

    def _follow(self, rid: int, now: float) -> None:
        """A conversation goes on after a turn ends (answered or not), after its think time."""
        after = self._next[rid]
        if after >= 0:
            self.schedule(now + self._think[after], ARRIVE, after, 0)

    def _report(self, key: int, phase: int, now: float) -> None:
        """What the agents of one phase send now, kept under ``key`` until delivered."""
        fleet, rows = self.fleet, self._phase_rows[phase]
        self._snapshots[key] = [snapshot(fleet, mi, r) for mi, r in rows]
        if fleet.maps:
            self._prefixes[key] = (now, [
                (mi, r, [fleet.maps[fleet.by_model[mi][row]].changes() for row in r.tolist()])
                for mi, r in rows
            ])  # fmt: skip

    def _tick(self, phase: int, now: float) -> None:
        key = next(self._seq)
        self._report(key, phase, now)
        self.schedule(now + self.setup.report_delay_s, DELIVER, key, 0)
        self.schedule(now + self.setup.report_interval_s, TICK, phase, 0)

    def _deliver(self, key: int, now: float) -> None:
        snaps = self._snapshots.pop(key)
        taken_at, prefixes = self._prefixes.pop(key, (0.0, []))
        for replica in self.replicas:
            for mi, rows, maps in prefixes:
                replica.take_prefixes(mi, rows, maps, taken_at)
            for snap in snaps:
                replica.views[snap[0]].take(snap, now)
                replica.wake(snap[0], now)


def simulate(setup: Setup, policy: str, reqs: Requests | None = None) -> Outcome:
    """Run ``policy`` (``CLAIRVOYANT`` for the reference) over ``setup``'s requests."""
    return Simulation(setup, policy, reqs if reqs is not None else setup.draw()).run()
