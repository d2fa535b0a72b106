"""Admission: what happens to a request when every node that could serve it is full.

A node is full for a model when it holds its concurrency cap of requests for it (the scheduler
leaves full nodes out: :meth:`router.scheduling.Scheduler.order` returns nothing). The request
then waits in its group's queue, bounded in length and in time:

* **Fair across tenants.** :class:`FairQueue` keeps one FIFO per tenant. A freed slot goes
  to the waiting tenant with the fewest requests in service per unit of weight (max-min fair
  in slots held), ties to the one served least recently by a virtual clock that advances by
  ``1 / weight`` per request served (start-time fair queuing; a tenant back from idle starts
  at the earliest clock of the others, so it banks no credit). A tenant flooding the router
  only gets the slots nobody with fewer in service is waiting for, and a light tenant waits
  for one freed slot, not behind the flood.
* **Bounded.** When the queue is full, the tenant with the longest weighted backlog loses its
  newest waiter (429 queue full), so a flood pushes out its own requests, not other tenants'.
  A waiter not served within ``max_wait_s`` gets 503 (no capacity). Both carry ``Retry-After``.
* **No gap between choosing and counting.** ``try_pick`` runs synchronously when a slot frees
  and must reserve what it picks; the reserved grant is handed to the waiter inside a
  :class:`Ticket`, and released again if the waiter left in between. Releasing the ticket when
  the request ends wakes the next waiter. Nothing is dropped without an answer.

:class:`FairQueue` is pure (the simulator ``bench.sim`` drives it directly);
:class:`Admission` adds the asyncio waiting on top.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

W = TypeVar("W")
R = TypeVar("R")


class Grant(Protocol):
    """What ``try_pick`` returns: a reservation the waiter owns from then on."""

    def release(self) -> None: ...


G = TypeVar("G", bound=Grant)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Per-group queue bounds. ``tenant_weights``: share of freed slots (default 1)."""

    max_queue: int = 256
    max_wait_s: float = 30.0
    retry_after_s: int = 2
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    scan_budget: int = 64  # waiters tried per freed slot (they may want other models)
    # Queues (one per group and model) kept while idle; past this, idle ones are dropped.
    max_queues: int = 1024

    def __post_init__(self) -> None:
        if self.max_queue < 0 or self.scan_budget < 1 or self.max_queues < 1:
            raise ValueError("max_queue must be >= 0, scan_budget and max_queues >= 1")
        if not self.max_wait_s > 0 or self.retry_after_s < 1:
            raise ValueError("max_wait_s must be > 0 and retry_after_s >= 1")
        if any(not w > 0 for w in self.tenant_weights.values()):
            raise ValueError("tenant weights must be > 0")


class Rejected(Exception):
    """The request cannot be admitted: 429 (queue full) or 503 (waited too long)."""

    def __init__(self, status: int, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


class FairQueue(Generic[W]):
    """Bounded waiting requests, one FIFO per tenant, served fairly (see the module doc).
    Each entry has a deadline; :meth:`expired` takes out those past it. The owner reports
    requests that went into service without waiting (:meth:`started`) and every request that
    left service (:meth:`finished`); :meth:`serve` counts those it starts itself."""

    def __init__(self, limit: int, weights: Mapping[str, float] | None = None) -> None:
        self._limit = limit
        self._weights = dict(weights or {})
        self._fifos: dict[str, deque[tuple[float, W]]] = {}
        self._clock: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def idle(self) -> bool:
        """Nobody waits and nobody is in service: the queue holds nothing worth keeping."""
        return not self._size and not self._busy

    def queued(self, tenant: str) -> int:
        fifo = self._fifos.get(tenant)
        return len(fifo) if fifo else 0

    def in_service(self, tenant: str) -> int:
        return self._busy.get(tenant, 0)

    def _weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def started(self, tenant: str) -> None:
        self._busy[tenant] = self._busy.get(tenant, 0) + 1
        if tenant not in self._clock:
            self._clock[tenant] = min(self._clock.values(), default=0.0)
        self._clock[tenant] += 1.0 / self._weight(tenant)

    def finished(self, tenant: str) -> None:
        left = self._busy.get(tenant, 0) - 1
        if left > 0:
            self._busy[tenant] = left
            return
        self._busy.pop(tenant, None)
        if tenant not in self._fifos:
            self._clock.pop(tenant, None)  # idle: forget it (it banks no credit anyway)

    def push(self, tenant: str, item: W, deadline: float, *, front: bool = False) -> W | None:
        """Queue ``item``. When the queue was full, returns the item that lost its place (the
        newest of the longest weighted backlog, which may be ``item`` itself), else None.
        ``front``: a request that was served and came back (its node turned out busy) goes
        back to the head of its tenant's line, past the bound (it was counted in service)."""
        if self._limit <= 0 and not front:
            return item
        pushed_out = None
        if self._size >= self._limit and not front:
            mine = (self.queued(tenant) + 1) / self._weight(tenant)
            victim = max(self._fifos, key=lambda t: len(self._fifos[t]) / self._weight(t))
            if len(self._fifos[victim]) / self._weight(victim) <= mine:
                return item
            pushed_out = self._fifos[victim].pop()[1]
            self._size -= 1
            self._drop_if_empty(victim)
        fifo = self._fifos.get(tenant)
        if fifo is None:
            others = [self._clock[t] for t in self._fifos]
            self._clock[tenant] = max(self._clock.get(tenant, 0.0), min(others, default=0.0))
            fifo = self._fifos[tenant] = deque()
        if front:
            fifo.appendleft((deadline, item))
        else:
            fifo.append((deadline, item))
        self._size += 1
        return pushed_out

    def _order(self) -> list[str]:
        busy, clock, weight = self._busy, self._clock, self._weight
        if len(self._fifos) == 1:
            return list(self._fifos)
        return sorted(self._fifos, key=lambda t: (busy.get(t, 0) / weight(t), clock[t]))

    def serve(self, pick: Callable[[W], R | None], budget: int) -> tuple[W, R] | None:
        """Offer waiters, fairest tenant first and FIFO within a tenant, to ``pick`` until it
        returns something (at most ``budget`` tries). The served waiter leaves the queue and
        counts as started."""
        tries = 0
        for tenant in self._order():
            fifo = self._fifos[tenant]
            for pos, (_, item) in enumerate(fifo):
                got = pick(item)
                if got is not None:
                    del fifo[pos]
                    self._size -= 1
                    self._busy[tenant] = self._busy.get(tenant, 0) + 1
                    self._clock[tenant] += 1.0 / self._weight(tenant)
                    self._drop_if_empty(tenant)
                    return item, got
                tries += 1
                if tries >= budget:
                    return None
        return None

    def remove(self, tenant: str, item: W) -> bool:
        """Take out a waiter that gave up; False if it was not queued."""
        fifo = self._fifos.get(tenant)
        if not fifo:
            return False
        for pos, (_, queued) in enumerate(fifo):
            if queued is item:
                del fifo[pos]
                self._size -= 1
                self._drop_if_empty(tenant)
                return True
        return False

    def expired(self, now: float) -> Iterator[W]:
        """Take out and yield every waiter whose deadline has passed."""
        for tenant in list(self._fifos):
            fifo = self._fifos[tenant]
            while fifo and fifo[0][0] <= now:
                yield fifo.popleft()[1]
                self._size -= 1
            self._drop_if_empty(tenant)

    def _drop_if_empty(self, tenant: str) -> None:
        if not self._fifos[tenant]:
            del self._fifos[tenant]
            if tenant not in self._busy:
                self._clock.pop(tenant, None)


class Ticket(Generic[G]):
    """An admitted request's grant. :meth:`release` (idempotent) releases the grant, ends the
    tenant's share of service and hands the freed capacity to the next waiter."""

    __slots__ = ("_done", "grant")

    def __init__(self, grant: G, done: Callable[[], None]) -> None:
        self.grant = grant
        self._done: Callable[[], None] | None = done

    def release(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            self.grant.release()
            done()


@dataclass(eq=False, slots=True)
class _Waiter(Generic[G]):
    try_pick: Callable[[], G | None]
    future: asyncio.Future[G]


class Admission:
    """One fair queue per group, and the waiting on it.

    The router calls :meth:`admit` with a synchronous ``try_pick`` that returns a reserved
    grant or None when every candidate is full (or raises when nothing could serve the request
    any more: a waiter then gets that error at once), releases the :class:`Ticket` it gets when
    the request ends, and calls :meth:`wake` whenever else capacity may have appeared or gone
    (another reservation released, a load report, a node added, node states checked).
    ``group`` is any queue key: a group, or a group and model so that waiters for one model
    never hold up another's."""

    def __init__(self, limits: AdmissionLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._queues: dict[str, FairQueue[_Waiter[Any]]] = {}

    def queue_lengths(self) -> dict[str, int]:
        """Requests waiting now, per queue key."""
        return {key: len(queue) for key, queue in self._queues.items()}

    def waiting(self, group: str) -> int:
        queue = self._queues.get(group)
        return len(queue) if queue is not None else 0

    async def admit(
        self,
        group: str,
        tenant: str | None,
        try_pick: Callable[[], G | None],
        *,
        returning: bool = False,
        wait_first: bool = False,
    ) -> Ticket[G]:
        """A ticket holding a grant from ``try_pick``, at once or after a fair wait; raises
        :class:`Rejected`. Release the ticket (not the grant) when the request ends.
        ``returning``: the request had a ticket and its node answered busy: it waits at the
        head of its tenant's line. ``wait_first``: do not try before the next :meth:`wake`."""
        queue = self._queues.get(group)
        if queue is None:
            if len(self._queues) >= self.limits.max_queues:
                self.drop_idle()
            queue = FairQueue(self.limits.max_queue, self.limits.tenant_weights)
            self._queues[group] = queue
        who = tenant or ""
        if not len(queue) and not wait_first:
            grant = try_pick()
            if grant is not None:
                queue.started(who)
                return Ticket(grant, lambda: self._finished(group, who))
        loop = asyncio.get_running_loop()
        waiter: _Waiter[G] = _Waiter(try_pick, loop.create_future())
        deadline = self._clock() + self.limits.max_wait_s
        pushed_out = queue.push(who, waiter, deadline, front=returning)
        if pushed_out is waiter:
            raise self._rejection(429, "the queue for this group is full")
        if pushed_out is not None and not pushed_out.future.done():
            pushed_out.future.set_exception(self._rejection(429, "pushed out of a full queue"))
        if not wait_first:
            self.wake(group)
        try:
            async with asyncio.timeout(self.limits.max_wait_s):
                grant = await waiter.future
        except TimeoutError:
            queue.remove(who, waiter)
            late = _granted(waiter.future)
            if late is None:
                raise self._rejection(503, "no capacity freed up in time") from None
            grant = late  # served just as the time ran out: take it
        except asyncio.CancelledError:
            queue.remove(who, waiter)
            late = _granted(waiter.future)
            if late is not None:  # served, but the client left: give the slot on
                late.release()
                self._finished(group, who)
            raise
        except Exception:  # try_pick refused it (no node can serve it any more)
            queue.remove(who, waiter)
            raise
        return Ticket(grant, lambda: self._finished(group, who))

    def drop_idle(self, which: Callable[[str], bool] = lambda key: True) -> None:
        """Forget idle queues (all, or those whose key ``which`` picks, e.g. a removed group's):
        the keys come from requests, and a queue with no waiter and nobody in service starts
        afresh at no cost."""
        for key in [k for k, q in self._queues.items() if q.idle and which(k)]:
            del self._queues[key]

    def _finished(self, group: str, tenant: str) -> None:
        self._queues[group].finished(tenant)
        self.wake(group)

    def wake(self, group: str) -> None:
        """Hand freed capacity to waiters, fairly, while ``try_pick`` finds some."""
        queue = self._queues.get(group)
        if queue is None:
            return
        while len(queue):
            served = queue.serve(_pick, self.limits.scan_budget)
            if served is None:
                return
            waiter, grant = served
            waiter.future.set_result(grant)

    def wake_all(self) -> None:
        """:meth:`wake` every queue (after a load report or a node change)."""
        for group in [g for g, q in self._queues.items() if len(q)]:
            self.wake(group)

    def _rejection(self, status: int, reason: str) -> Rejected:
        return Rejected(status, reason, self.limits.retry_after_s)


def _granted(future: asyncio.Future[G]) -> G | None:
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


def _pick(waiter: _Waiter[Any]) -> Grant | None:
    if waiter.future.done():  # cancelled or pushed out, not yet removed: never grant
        return None
    try:
        return waiter.try_pick()
    except Exception as exc:  # it can no longer be served at all: say so now, not at timeout
        waiter.future.set_exception(exc)
        return None


ADMISSION = web.AppKey("admission", Admission)
