"""The clairvoyant router: the reference every policy is measured against.

It knows what no real router can: every engine's exact running streams (with the work each has
left) and queue, its prompt cache's exact content, model residency, and each request's output
length. For each request it computes the TTFT the request would get at every engine that has
room (under its concurrency cap), by playing the engine's queue forward, and sends it to the
engine where that is least: queue wait (with the queued requests' true work and cache hits),
plus model load, plus prefill of the part of the prompt the engine does not hold, plus the
first token, at the batch it joins.

It is greedy, one request at a time: it never holds a request back for a later one's sake,
nor weighs what its choice costs the requests after it (a slow node it fills, a cache it
evicts, a conversation it moves away from the node that holds the rest of it). So it is a
strong reference, not a proven optimum: a policy may beat it on some figure. With prompt
caches it sends each turn where that turn starts soonest, which draws conversations to the
fastest GPUs and into their queues; a policy that keeps each conversation where it is cached
can have the lower median while the clairvoyant keeps the lowest tail. What it guarantees is
the pick itself: the TTFT it predicts is the least of its candidates' and, as long as the
engine's state evolves as it saw it (no cache change before the request starts, no two streams
ending at the same instant), the TTFT the request gets.
When every engine is at its cap the request waits in the router's fair queue, like anyone's.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from bench.sim.nodes import LOADED, LOADING, Engine, Fleet
from bench.sim.routers import Replica


def start_delay(fleet: Fleet, eng: Engine, now: float) -> tuple[float, int]:
    """Seconds from ``now`` until a request sent to ``eng`` now would hold a slot, and the
    batch it would join (streams running, itself included)."""
    slots = eng.spec.slots
    if eng.state == LOADED:
        if len(eng.jobs) < slots and not eng.queue:
            return 0.0, len(eng.jobs) + 1
        v = eng.v + ((now - eng.t) * eng.spec.rate(len(eng.jobs)) if eng.jobs else 0.0)
        t = now
        running = [f for f, _ in eng.jobs]
        heapq.heapify(running)
    else:  # loading, or loading once it may (its queue starts at once when loaded)
        wait = eng.ready - now if eng.state == LOADING else fleet.base[eng.mi][eng.local]
        v, t, running = 0.0, now + max(wait, 0.0), []
    full_rate = eng.spec.rate(slots)
    for rid in eng.queue:  # ahead of it, in order: each takes the next free slot
        if len(running) >= slots:
            finish = heapq.heappop(running)
            t += max(finish - v, 0.0) / full_rate
            v = max(v, finish)
        heapq.heappush(running, v + fleet.work(rid) + fleet.prefill_for(rid, eng)[0])
    if len(running) < slots:
        return t - now, len(running) + 1
    return t + max(running[0] - v, 0.0) / full_rate - now, slots


def exact_ttft(fleet: Fleet, rid: int, eng: Engine, now: float) -> float:
    """The TTFT (from ``now``) of ``rid`` sent to ``eng`` now, as the engine will compute it."""
    delay, batch = start_delay(fleet, eng, now)
    prefill = fleet.prefill_for(rid, eng)[0]
    return delay + (prefill + 1.0) / eng.spec.rate(batch)


class Clairvoyant(Replica):
    """A single router that picks each request's engine by its exact TTFT (see the module's
    docstring). ``predicted[rid]``: the TTFT it expected for ``rid`` (from its arrival)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.predicted: dict[int, float] = {}

    def try_pick(self, rid: int) -> int | None:
        mi = self._model[rid]
        view, fleet, now = self.views[mi], self.fleet, self._now
        load, cap, cold = fleet.load[mi], view.table.cap, fleet.cold_true(mi, now)
        tok1, decay = fleet.tok1[mi], fleet.decay[mi]
        room = (cold < math.inf) & ((cap <= 0) | (load < cap))
        prefill = fleet.prefills(rid, mi)
        # A loaded engine with a free slot (and so no queue) starts it at once, in a batch one
        # larger: its TTFT in closed form. The others only where they could do better.
        free = room & (fleet.state[mi] == LOADED) & (load < fleet.slots[mi])
        ttft = np.where(free, (prefill + 1.0) / (tok1 / (1.0 + decay * load)), math.inf)
        best_row = int(np.argmin(ttft)) if free.any() else -1
        best = float(ttft[best_row]) if free.any() else math.inf
        # at best: a full engine starts it when its next stream ends, in a full batch; one not
        # loaded once loaded, in a batch of one
        slots = fleet.slots[mi]
        full = (prefill + 1.0) / (tok1 / (1.0 + decay * (slots - 1.0)))
        wait = np.maximum(fleet.next_done[mi] - now, 0.0)
        at_best = np.where(fleet.state[mi] == LOADED, wait + full, cold + (prefill + 1.0) / tok1)
        for row in np.flatnonzero(room & ~free & (at_best < best)).tolist():
            exact = exact_ttft(fleet, rid, fleet.engines[view.eids[row]], now)
            if exact < best:
                best_row, best = row, exact
        if best_row < 0:
            return None
        view.own[best_row] += 1
        self.where[rid] = best_row
        self.predicted[rid] = now - fleet.arrival[rid] + best
        return view.eids[best_row]
