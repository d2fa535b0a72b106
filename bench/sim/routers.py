"""Router replicas in the simulation, each running the router's own scheduler.

A replica is a router's registry (:class:`router.registry.Registry`) with one node per engine
(:mod:`bench.sim.agents`), which takes the agents' reports (:meth:`~router.registry.Registry.
apply_report`) and busy answers (:meth:`~router.registry.Registry.note_busy`) as the router
does, and a roster of each model's nodes (:class:`router.roster.Roster`: the router's candidate
code, scoring with :class:`router.scoring.ScoringParams`). It reserves with the router's
:class:`~router.registry.Reservation`, orders with the real :class:`router.scheduling.Scheduler`
and queues with the real :class:`router.admission.FairQueue`. The oracle is the same decision
rule fed the truth: every request in flight at every node, true speeds and residency, instantly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np

from bench.sim.agents import Reader, Snapshot, engine_name, snapshot
from bench.sim.nodes import Fleet
from bench.sim.workload import Requests
from node_protocol.wire import Registration
from router.admission import AdmissionLimits, FairQueue
from router.registry import Registry, Reservation, node_id_for
from router.roster import CandidateRules, Roster
from router.scheduling import CandidateTable, Scheduler

STALE_AFTER_FACTOR = 3.0  # a report older than this many intervals is stale (as the router)
PICK_TRIES = 3  # the router's max_attempts: busy answers to slot checks before it waits
GROUP = "g"
FAILURE_THRESHOLD = 3

__all__ = ["Replica", "Snapshot", "snapshot"]


class View:
    """One replica's view of one model's engines: the router's roster of their nodes."""

    def __init__(self, registry: Registry, fleet: Fleet, mi: int, rules: CandidateRules) -> None:
        self.registry, self.mi = registry, mi
        self.eids: list[int] = fleet.by_model[mi]
        group = registry.groups[GROUP]
        nodes = [group.nodes[node_id_for(GROUP, engine_name(e))] for e in self.eids]
        self.model = fleet.models[mi]
        self.roster = Roster(nodes, (self.model,), rules, group.generation)
        self._held: dict[int, Reservation] = {}
        self._reader = Reader(fleet, mi)

    def pick(
        self, scheduler: Scheduler, policy: str, key: str, now: float, affinity: str,
        waiting: int, busy: int,
    ) -> tuple[int, int] | None:  # fmt: skip
        """The row to send to and its slot check, or None (queue the request)."""
        rows = self.roster.decide(scheduler, policy, key, now, limit=1, affinity=affinity,
                                  waiting=waiting)  # fmt: skip
        if not rows:
            return None
        return rows[0], self.roster.slot_check(rows[0], now, busy)

    def hold(self, rid: int, row: int) -> None:
        self._held[rid] = Reservation(self.roster.nodes[row], self.model)

    def free(self, rid: int) -> None:
        self._held.pop(rid).release()

    def busy(self, row: int, in_flight: float, now: float) -> None:
        """The agent answered a slot check busy, with its count."""
        self.registry.note_busy(self.roster.nodes[row], int(in_flight), now)

    def take(self, snap: Snapshot, now: float) -> None:
        """Reports arriving ``now``."""
        nodes = self.roster.nodes
        for row, report in self._reader.reports(snap):
            self.registry.apply_report(nodes[row], report, now)


class OracleView:
    """Perfect, instant knowledge, ordered by ``least_loaded``."""

    def __init__(self, fleet: Fleet, mi: int, cap_factor: float) -> None:
        n = len(fleet.by_model[mi])
        slots = fleet.slots[mi]
        self.fleet, self.mi = fleet, mi
        self.eids: list[int] = fleet.by_model[mi]
        self.own = np.zeros(n)
        self._row: dict[int, int] = {}
        self.table = CandidateTable(
            ids=[engine_name(e) for e in self.eids],
            load=np.zeros(n),
            slots=slots,
            cap=np.ceil(slots * cap_factor) if cap_factor > 0 else np.zeros(n),
            tok_s=np.full(n, math.nan),
            weight=np.ones(n),
            cold_s=np.zeros(n),
            penalty=np.ones(n),
            own=self.own,
        )

    def pick(
        self, scheduler: Scheduler, policy: str, key: str, now: float, affinity: str,
        waiting: int, busy: int,
    ) -> tuple[int, int] | None:  # fmt: skip
        t, fleet, mi = self.table, self.fleet, self.mi
        t.load, t.tok_s, t.cold_s = fleet.load[mi], fleet.tok1[mi], fleet.cold_true(mi, now)
        rows = scheduler.rank("least_loaded", key, t, limit=1, affinity=affinity, waiting=waiting)
        return (int(rows[0]), 0) if rows.size else None

    def hold(self, rid: int, row: int) -> None:
        self._row[rid] = row
        self.own[row] += 1

    def free(self, rid: int) -> None:
        self.own[self._row.pop(rid)] -= 1

    def busy(self, row: int, in_flight: float, now: float) -> None:
        raise AssertionError("the oracle sends no slot checks")

    def take(self, snap: Snapshot, now: float) -> None:
        raise AssertionError("the oracle reads no reports")


def _registry(fleet: Fleet) -> Registry:
    """A router's registry with a node per engine, each with its first report in hand."""
    registry = Registry("least_loaded", FAILURE_THRESHOLD)
    registry.ensure_group(GROUP).declared = True
    for mi, eids in enumerate(fleet.by_model):
        sent = Reader(fleet, mi).reports(snapshot(fleet, mi, np.arange(len(eids))))
        for eid, (_, report) in zip(eids, sent, strict=True):
            name = engine_name(eid)
            node, _ = registry.register(GROUP, Registration(name, f"http://{name}"), 0.0)
            registry.apply_report(node, report, 0.0)
    return registry


class Replica:
    """One router process: views, a scheduler and an admission queue."""

    def __init__(
        self,
        policy: str,
        fleet: Fleet,
        reqs: Requests,
        limits: AdmissionLimits,
        *,
        cap_factor: float,
        report_interval_s: float,
        seed: int,
        reject: Callable[[int, int, float], None],
        replicas: int = 1,
        oracle: bool = False,
    ) -> None:
        self.views: list[View | OracleView]
        if oracle:
            self.views = [OracleView(fleet, mi, cap_factor) for mi in range(len(fleet.models))]
        else:
            rules = CandidateRules(
                FAILURE_THRESHOLD,
                STALE_AFTER_FACTOR * report_interval_s,
                cap_factor=cap_factor if cap_factor > 0 else None,
                replicas=replicas,
            )
            registry = _registry(fleet)
            self.views = [View(registry, fleet, mi, rules) for mi in range(len(fleet.models))]
        self.policy = "least_loaded" if oracle else policy
        self.scheduler = Scheduler(random.Random(seed))
        # one queue per model: a freed slot can only serve its own model's waiters
        self.queues: list[FairQueue[int]] = [
            FairQueue(limits.max_queue, limits.tenant_weights) for _ in self.views
        ]
        self.limits, self.fleet, self.reject = limits, fleet, reject
        self._model: list[int] = reqs.model.tolist()
        self._tenant = [str(t) for t in reqs.tenant.tolist()]
        self._affinity = [
            f"s{s}" if s >= 0 else f"t{t}"
            for s, t in zip(reqs.session.tolist(), self._tenant, strict=True)
        ]
        self._keys = [f"{GROUP}/{m}" for m in fleet.models]
        self.busy_answers = 0
        self.bounced: dict[int, int] = {}  # request -> busy answers it had
        self._now = 0.0

    def offer(self, rid: int, now: float) -> None:
        self._now = now
        mi = self._model[rid]
        queue = self.queues[mi]
        alone = not len(queue)
        if alone:
            eid = self.try_pick(rid)
            if eid is not None:
                queue.started(self._tenant[rid])
                self.fleet.arrive(rid, eid, now)
                return
        out = queue.push(self._tenant[rid], rid, now + self.limits.max_wait_s)
        if out is not None:
            self.reject(out, 429, now)
        if not alone and out != rid:
            self.wake(mi, now)

    def try_pick(self, rid: int) -> int | None:
        """The engine for ``rid``, reserved, or None (queue it). A pick that the agent answers
        busy (:func:`router.load_estimates.slot_check`) is taken back and made again, as the
        router does, up to ``PICK_TRIES`` times (the round trip is not modelled)."""
        mi = self._model[rid]
        view = self.views[mi]
        for _ in range(PICK_TRIES):
            busy = self.bounced.get(rid, 0)
            picked = view.pick(self.scheduler, self.policy, self._keys[mi], self._now,
                               self._affinity[rid], len(self.queues[mi]), busy)  # fmt: skip
            if picked is None:
                return None
            row, check = picked
            eid = view.eids[row]
            at_node = self.fleet.in_flight(eid)
            if check and at_node >= check:
                view.busy(row, at_node, self._now)
                self.busy_answers += 1
                self.bounced[rid] = busy + 1
                continue
            self.bounced.pop(rid, None)
            view.hold(rid, row)
            return eid
        return None

    def wake(self, mi: int, now: float) -> None:
        """Serve model ``mi``'s waiters while it has room; drop those that waited too long.
        Every waiter of a model gets the same answer from a full fleet, so one miss ends it."""
        queue = self.queues[mi]
        if not len(queue):
            return
        self._now = now
        for rid in queue.expired(now):
            self.reject(rid, 503, now)
        while len(queue):
            served = queue.serve(self.try_pick, 1)
            if served is None:
                return
            self.fleet.arrive(served[0], served[1], now)

    def wake_all(self, now: float) -> None:
        for mi in range(len(self.queues)):
            self.wake(mi, now)

    def done(self, rid: int, now: float) -> None:
        mi = self._model[rid]
        self.views[mi].free(rid)
        self.queues[mi].finished(self._tenant[rid])
        self.wake(mi, now)
