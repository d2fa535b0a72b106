"""Router replicas in the simulation, each deciding with the router's own modules.

A replica keeps, per model, a :class:`router.scheduling.CandidateTable` built the way the router
builds its candidates: its own exact in-flight counts, the agents' last reports (load, measured
speed, residency) with their age, and the concurrency cap. It orders with the real
:class:`router.scheduling.Scheduler` and queues with the real
:class:`router.admission.FairQueue`. The clairvoyant reference is in
:mod:`bench.sim.clairvoyant`.

Where requests are conversation turns, a replica also keeps a map of the nodes' prompt caches
(:class:`bench.sim.prefix.PrefixView`: the agents' reports plus what it routed since), for a
prefix-aware scheduler to consume. The router's scheduler does not score prefixes yet; the
simulator's own ``prefix_affinity`` policy (a comparison baseline, not a router policy) takes,
among the nodes ``least_loaded`` would accept, the one that holds the longest leading part of
the prompt, ties in ``least_loaded``'s order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from bench.sim.nodes import Fleet
from bench.sim.prefix import Change, PrefixView
from bench.sim.workload import Floats, Requests
from router.admission import AdmissionLimits, FairQueue
from router.registry import smooth_others
from router.scheduling import (
    STALE_PENALTY,
    CandidateTable,
    Scheduler,
    batch_one_speeds,
    estimate_loads,
    loading_for_us,
    slot_check,
)

STALE_AFTER_FACTOR = 3.0  # a report older than this many intervals is stale (as the router)
PICK_TRIES = 3  # the router's max_attempts: busy answers to slot checks before it waits
PREFIX_AFFINITY = "prefix_affinity"  # the simulator's prefix-aware baseline (not in the router)

Snapshot = tuple[int, np.ndarray, Floats, Floats, Floats]  # model, rows, load, speed, cold


class View:
    """One replica's knowledge of one model's engines."""

    def __init__(self, fleet: Fleet, mi: int, names: Sequence[str], cap_factor: float) -> None:
        n = len(fleet.by_model[mi])
        self.fleet, self.mi = fleet, mi
        self.eids: list[int] = fleet.by_model[mi]
        self.own = np.zeros(n)
        self.own_at = np.zeros(n)  # as the router's Node: own_at_report
        self.others = np.zeros(n)  # others_in_flight
        self.busy_others = np.full(n, math.nan)  # busy_others (NaN: None)
        self.report_at = np.full(n, -math.inf)  # load_read_at
        self.seen = np.zeros(n, dtype=bool)  # a report came
        self.cold = fleet.cold_reported(mi)
        slots = fleet.slots[mi]
        self.table = CandidateTable(
            ids=list(names),
            load=np.zeros(n),
            slots=slots,
            cap=np.ceil(slots * cap_factor) if cap_factor > 0 else np.zeros(n),
            tok_s=np.full(n, math.nan),
            weight=np.ones(n),
            cold_s=fleet.cold_reported(mi),
            penalty=np.ones(n),
            own=self.own,
        )

    def refresh(self, now: float, stale_after: float) -> CandidateTable:
        t = self.table
        t.load, stale = estimate_loads(
            self.own,
            self.own_at,
            self.own_at + np.where(np.isnan(self.busy_others), self.others, self.busy_others),
            now - self.report_at,
            stale_after,
        )  # every node has an agent: no share of the free slots to claim (candidate_for)
        t.penalty = np.where(stale, STALE_PENALTY, 1.0)
        t.cold_s = loading_for_us(self.cold, self.own)
        return t

    def busy(self, row: int, in_flight: float, now: float) -> None:
        """The agent answered a slot check busy, with its count: as fresh as a report
        (:meth:`router.registry.Registry.note_busy`)."""
        self.busy_others[row] = max(in_flight - self.own[row], 0.0)
        self.own_at[row] = self.own[row]
        self.report_at[row] = now

    def take(self, snap: Snapshot, now: float) -> None:
        """A report arriving ``now``, taken as :meth:`router.registry.Registry.apply_report`
        takes it: the others' share smoothed, this replica's own counts as they are now."""
        _, rows, load, speed, cold = snap
        own = self.own[rows]
        others = np.maximum(load - own, 0.0)
        seen = self.seen[rows] & np.isnan(self.busy_others[rows])
        self.others[rows] = np.where(seen, smooth_others(self.others[rows], others), others)
        self.seen[rows] = True
        self.busy_others[rows] = math.nan
        self.own_at[rows] = own
        self.report_at[rows] = now
        known = ~np.isnan(speed)
        self.table.tok_s[rows[known]] = speed[known]
        self.cold[rows] = cold


def snapshot(fleet: Fleet, mi: int, rows: np.ndarray) -> Snapshot:
    """What the agents of these engines report now."""
    running = fleet.running[mi][rows]
    tok1, decay = fleet.tok1[mi][rows], fleet.decay[mi][rows]
    aggregate = running * tok1 / (1.0 + decay * np.maximum(running - 1.0, 0.0))
    speed = batch_one_speeds(aggregate, running)
    return mi, rows, fleet.load[mi][rows].copy(), speed, fleet.cold_reported(mi)[rows]


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
    ) -> None:
        names = [[f"e{e}" for e in eids] for eids in fleet.by_model]
        self.views = [View(fleet, mi, names[mi], cap_factor) for mi in range(len(names))]
        for view in self.views:
            view.table.replicas = replicas  # slot checks and the backlog's node queueing
        self.prefix = [PrefixView(len(v.eids)) for v in self.views] if fleet.turns else []
        self.policy = policy
        self.scheduler = Scheduler(random.Random(seed))
        # one queue per model: a freed slot can only serve its own model's waiters
        self.queues: list[FairQueue[int]] = [
            FairQueue(limits.max_queue, limits.tenant_weights) for _ in self.views
        ]
        self.limits, self.fleet, self.reject = limits, fleet, reject
        self.stale_after = STALE_AFTER_FACTOR * report_interval_s
        self._model: list[int] = reqs.model.tolist()
        self._tenant = [str(t) for t in reqs.tenant.tolist()]
        self._affinity = [
            f"s{s}" if s >= 0 else f"t{t}"
            for s, t in zip(reqs.session.tolist(), self._tenant, strict=True)
        ]
        self._keys = [f"g/{m}" for m in fleet.models]
        self.where: dict[int, int] = {}  # request -> row in its model's view
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
        busy (:func:`router.scheduling.slot_check`) is taken back and made again, as the
        router does, up to ``PICK_TRIES`` times (the round trip is not modelled)."""
        mi = self._model[rid]
        view = self.views[mi]
        for _ in range(PICK_TRIES):
            table = view.refresh(self._now, self.stale_after)
            rows = self._rank(rid, mi, table)
            if not rows.size:
                return None
            row = int(rows[0])
            eid = view.eids[row]
            busy = self.bounced.get(rid, 0)
            check = slot_check(
                table.load[row], table.slots[row], table.cap[row], table.replicas, busy
            )
            at_node = self.fleet.in_flight(eid)
            if check and at_node >= check:
                view.busy(row, at_node, self._now)
                self.busy_answers += 1
                self.bounced[rid] = busy + 1
                continue
            self.bounced.pop(rid, None)
            view.own[row] += 1
            self.where[rid] = row
            if self.prefix:
                self.prefix[mi].route(row, *self.fleet.chain(rid), self._now)
            return eid
        return None

    def _rank(self, rid: int, mi: int, table: CandidateTable) -> np.ndarray:
        """The scheduler's first choice for ``rid`` (none: wait), or ``prefix_affinity``'s."""
        key, waiting = self._keys[mi], len(self.queues[mi])
        if self.policy != PREFIX_AFFINITY:
            return self.scheduler.rank(
                self.policy, key, table, limit=1, affinity=self._affinity[rid], waiting=waiting
            )
        every = len(table.ids)
        rows = self.scheduler.rank("least_loaded", key, table, limit=every, waiting=waiting)
        if rows.size > 1:
            cached = self.prefix[mi].cached_tokens(*self.fleet.chain(rid))
            first = int(np.argmax(cached[rows]))
            rows = rows[first : first + 1]
        return rows[:1]

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

    def take_prefixes(
        self, mi: int, rows: np.ndarray, changes: Sequence[list[Change]], taken_at: float
    ) -> None:
        """What changed in the agents' maps of these rows' prompt caches, up to ``taken_at``."""
        self.prefix[mi].take(rows.tolist(), changes, taken_at)

    def done(self, rid: int, now: float) -> None:
        mi = self._model[rid]
        self.views[mi].own[self.where.pop(rid)] -= 1
        self.queues[mi].finished(self._tenant[rid])
        self.wake(mi, now)
