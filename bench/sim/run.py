"""The discrete-event loop: arrivals, stream completions, model loads and agent reports.

Arrivals come from the pre-drawn :class:`~bench.sim.workload.Requests` (request ``i`` goes to
replica ``i % replicas``); everything else is a heap of ``(time, seq, kind, a, b)``. Every
node reports every ``report_interval_s`` (nodes staggered over ``PHASES`` slices of the
interval) and each replica receives the report ``report_delay_s`` later.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from bench.sim.cluster import PREFILL_RATIO, NodeSpec, engines_for
from bench.sim.nodes import Fleet
from bench.sim.routers import Replica, Snapshot, snapshot
from bench.sim.workload import Floats, Ints, Requests, Stream, generate
from router.admission import AdmissionLimits

PHASES = 10
COMPLETE, LOADED, TICK, DELIVER = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Setup:
    """A fleet, its traffic and the router deployment in front of it."""

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

    def models(self) -> list[str]:
        return sorted({m for node in self.nodes for m in node.models})

    def draw(self) -> Requests:
        ids = {m: i for i, m in enumerate(self.models())}
        duration = self.duration_s or self.requests / sum(s.rate for s in self.streams)
        return generate(self.streams, duration, ids, self.seed)


@dataclass(slots=True)
class Outcome:
    """Per-request results of one run (NaN times for rejected requests)."""

    policy: str
    requests: Requests
    ttft: Floats
    e2e: Floats
    status: Ints
    cold_loads: int
    avoidable_cold_loads: int
    wall_s: float
    busy_answers: int = 0  # slot checks the agents answered busy (router replicas only)


class Simulation:
    """One policy over one setup."""

    def __init__(self, setup: Setup, policy: str, reqs: Requests) -> None:
        self.setup, self.reqs = setup, reqs
        self.policy = policy
        oracle = self.oracle = policy == "oracle"
        self.replica_count = 1 if oracle else setup.replicas
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = itertools.count()
        # report key -> what the agents sent
        self._snapshots: dict[int, list[Snapshot]] = {}
        n = len(reqs)
        self.status = [0] * n
        self._open = n
        work = reqs.output + reqs.prompt / PREFILL_RATIO
        self.fleet = Fleet(
            setup.nodes,
            engines_for(setup.nodes),
            setup.models(),
            work,
            reqs.prompt / PREFILL_RATIO,
            reqs.session.tolist(),
            self.schedule,
            self._done,
        )
        fleet = self.fleet
        fleet.arrival = reqs.arrival.tolist()
        fleet.ttft, fleet.finish = [math.nan] * n, [math.nan] * n
        self.replicas = [
            Replica(
                policy,
                fleet,
                reqs,
                setup.limits,
                cap_factor=setup.cap_factor,
                report_interval_s=setup.report_interval_s,
                seed=setup.seed * 1000 + i,
                reject=self._reject,
                replicas=self.replica_count if setup.share_room else 1,
                oracle=oracle,
            )
            for i in range(self.replica_count)
        ]
        node_of = [np.array([fleet.engines[e].spec.node for e in eids]) for eids in fleet.by_model]
        self._phase_rows = [
            [(mi, np.flatnonzero(nodes % PHASES == p)) for mi, nodes in enumerate(node_of)]
            for p in range(PHASES)
        ]
        for p in range(PHASES):  # everyone starts with a report in hand, staggered after
            if not oracle:
                self._snapshots[-1] = self._snap(p)
                self._deliver(-1, 0.0)
                self.schedule(setup.report_interval_s * (p + 1) / PHASES, TICK, p, 0)

    def schedule(self, when: float, kind: int, a: int, b: int) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, a, b))

    def run(self) -> Outcome:
        started = time.perf_counter()
        arrivals = self.reqs.arrival.tolist()
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
                else:
                    fleet.loaded(a, now)
                    for replica in replicas:
                        replica.wake_all(now)
            else:
                replicas[i % count].offer(i, arrivals[i])
                i += 1
        ttft, finish = np.array(fleet.ttft), np.array(fleet.finish)
        return Outcome(
            policy=self.policy,
            requests=self.reqs,
            ttft=ttft,
            e2e=finish - self.reqs.arrival,
            status=np.array(self.status, dtype=np.int64),
            cold_loads=fleet.cold_loads,
            avoidable_cold_loads=fleet.avoidable,
            wall_s=time.perf_counter() - started,
            busy_answers=sum(r.busy_answers for r in replicas),
        )

    def _done(self, rid: int, eid: int, now: float) -> None:
        self._open -= 1
        self.replicas[rid % self.replica_count].done(rid, now)

    def _reject(self, rid: int, status: int, now: float) -> None:
        self._open -= 1
        self.status[rid] = status

    def _snap(self, phase: int) -> list[Snapshot]:
        return [snapshot(self.fleet, mi, r) for mi, r in self._phase_rows[phase]]

    def _tick(self, phase: int, now: float) -> None:
        key = next(self._seq)
        self._snapshots[key] = self._snap(phase)
        self.schedule(now + self.setup.report_delay_s, DELIVER, key, 0)
        self.schedule(now + self.setup.report_interval_s, TICK, phase, 0)

    def _deliver(self, key: int, now: float) -> None:
        snaps = self._snapshots.pop(key)
        for replica in self.replicas:
            for snap in snaps:
                replica.views[snap[0]].take(snap, now)
                replica.wake(snap[0], now)


def simulate(setup: Setup, policy: str, reqs: Requests | None = None) -> Outcome:
    """Run ``policy`` ("oracle" for the oracle) over ``setup``'s requests."""
    return Simulation(setup, policy, reqs if reqs is not None else setup.draw()).run()
