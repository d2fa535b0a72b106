"""Admission: bounded, tenant-fair waiting for a slot, with real asyncio tasks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from router.admission import Admission, AdmissionLimits, FairQueue, Rejected, Ticket


class Held:
    """One slot of a :class:`Pool`, released once."""

    def __init__(self, pool: Pool, who: str) -> None:
        self.pool, self.who = pool, who

    def release(self) -> None:
        self.pool.free += 1


class Pool:
    """A fixed number of slots; ``picker`` reserves one synchronously or returns None."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.served: list[str] = []

    def picker(self, who: str) -> Callable[[], Held | None]:
        def pick() -> Held | None:
            if self.free <= 0:
                return None
            self.free -= 1
            self.served.append(who)
            return Held(self, who)

        return pick


def admission(**kw: object) -> Admission:
    return Admission(AdmissionLimits(**kw), time.monotonic)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class TestFairQueue:
    """The pure queue: order, bounds and expiry."""

    def test_fewest_in_service_goes_first(self) -> None:
        """A tenant holding fewer slots is served before one holding many, FIFO within each."""
        q: FairQueue[str] = FairQueue(100)
        for _ in range(5):
            q.started("flood")
        for i in range(3):
            q.push("flood", f"f{i}", 1e9)
        q.push("light", "l0", 1e9)
        q.push("light", "l1", 1e9)
        served = [q.serve(lambda item: item, 1) for _ in range(5)]
        assert [s[0] for s in served if s] == ["l0", "l1", "f0", "f1", "f2"]

    def test_equal_tenants_alternate(self) -> None:
        """Two backlogged tenants with nothing in service take turns."""
        q: FairQueue[str] = FairQueue(100)
        for i in range(4):
            q.push("a", f"a{i}", 1e9)
            q.push("b", f"b{i}", 1e9)
        order = []
        while (got := q.serve(lambda item: item, 1)) is not None:
            order.append(got[0][0])
            q.finished(got[0][0])
        assert order == list("abababab")

    def test_full_queue_pushes_out_the_longest_backlog(self) -> None:
        """At the bound, the flooding tenant's newest waiter loses its place, and a newcomer of
        that same tenant is the one turned away."""
        q: FairQueue[str] = FairQueue(3)
        for i in range(3):
            assert q.push("flood", f"f{i}", 1e9) is None
        assert q.push("light", "l0", 1e9) == "f2"
        assert q.push("flood", "f3", 1e9) == "f3"
        assert len(q) == 3
        assert q.queued("light") == 1

    def test_a_returning_request_goes_back_to_the_head_past_the_bound(self) -> None:
        """A request whose node answered busy rejoins at the head of its tenant's line, even in
        a full queue (it was counted in service, not a newcomer)."""
        q: FairQueue[str] = FairQueue(2)
        q.push("a", "a0", 1e9)
        q.push("a", "a1", 1e9)
        assert q.push("a", "back", 1e9, front=True) is None
        assert len(q) == 3
        served = [got[0] for _ in range(3) if (got := q.serve(lambda item: item, 1))]
        assert served == ["back", "a0", "a1"]

    def test_expired_waiters_leave(self) -> None:
        """Waiters past their deadline come out of :meth:`expired`, the rest stay."""
        q: FairQueue[str] = FairQueue(10)
        q.push("a", "old", 1.0)
        q.push("a", "new", 5.0)
        q.push("b", "other", 2.0)
        assert sorted(q.expired(2.0)) == ["old", "other"]
        assert len(q) == 1

    def test_weights_share_slots(self) -> None:
        """A tenant of weight 3 gets three times the slots of a weight-1 tenant."""
        q: FairQueue[str] = FairQueue(1000, {"big": 3.0})
        for i in range(200):
            q.push("big", f"b{i}", 1e9)
            q.push("small", f"s{i}", 1e9)
        served = Counter(got[0][0] for _ in range(200) if (got := q.serve(lambda i: i, 1)))
        assert served["b"] == 150
        assert served["s"] == 50


class TestAdmit:
    """The asyncio side: waiting, waking, fairness, 429 and 503."""

    async def test_admits_at_once_when_a_slot_is_free(self) -> None:
        """With room, admit returns a ticket without queueing; releasing it frees the slot."""
        pool, adm = Pool(1), admission()
        ticket = await adm.admit("g", "t", pool.picker("t"))
        assert pool.free == 0
        assert adm.waiting("g") == 0
        ticket.release()
        ticket.release()
        assert pool.free == 1

    async def test_a_returning_request_can_wait_for_news_first(self) -> None:
        """``wait_first``: even with a free slot, the request is not tried before the next
        wake (after busy answers in a row: wait for a release or a report)."""
        pool, adm = Pool(1), admission()
        task = asyncio.create_task(
            adm.admit("g", "t", pool.picker("back"), returning=True, wait_first=True)
        )
        await settle()
        assert not task.done()
        assert adm.waiting("g") == 1
        adm.wake("g")
        ticket = await asyncio.wait_for(task, 1.0)
        assert pool.served == ["back"]
        ticket.release()

    async def test_release_wakes_the_next_waiter(self) -> None:
        """A waiter gets the slot the moment a ticket is released."""
        pool, adm = Pool(1), admission()
        first = await adm.admit("g", "t", pool.picker("first"))
        waiting = asyncio.create_task(adm.admit("g", "t", pool.picker("second")))
        await settle()
        assert not waiting.done()
        assert adm.waiting("g") == 1
        first.release()
        second = await asyncio.wait_for(waiting, 1.0)
        assert pool.served == ["first", "second"]
        second.release()

    async def test_flood_does_not_starve_a_light_tenant(self) -> None:
        """With two slots held by a flooding tenant and 20 more of its requests waiting, a
        light tenant's request is served at the next freed slot."""
        pool, adm = Pool(2), admission()
        held = [await adm.admit("g", "flood", pool.picker("flood")) for _ in range(2)]
        flood = [
            asyncio.create_task(adm.admit("g", "flood", pool.picker("flood"))) for _ in range(20)
        ]
        await settle()
        light = asyncio.create_task(adm.admit("g", "light", pool.picker("light")))
        await settle()
        held.pop().release()
        ticket = await asyncio.wait_for(light, 1.0)
        assert pool.served[-1] == "light"
        ticket.release()
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        for t in held:
            t.release()

    async def test_queue_full_gives_429_with_retry_after(self) -> None:
        """Past the queue bound the newcomer is turned away with 429 and Retry-After."""
        pool, adm = Pool(0), admission(max_queue=2, retry_after_s=7)
        waiters = [asyncio.create_task(adm.admit("g", "t", pool.picker("t"))) for _ in range(2)]
        await settle()
        with pytest.raises(Rejected) as info:
            await adm.admit("g", "t", pool.picker("t"))
        assert info.value.status == 429
        assert info.value.retry_after_s == 7
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    async def test_pushed_out_waiter_gets_429(self) -> None:
        """A flooding tenant's queued request pushed out by another tenant's gets 429."""
        pool, adm = Pool(0), admission(max_queue=2, max_wait_s=5.0)
        flood = [asyncio.create_task(adm.admit("g", "flood", pool.picker("f"))) for _ in range(2)]
        await settle()
        light = asyncio.create_task(adm.admit("g", "light", pool.picker("light")))
        with pytest.raises(Rejected) as info:
            await asyncio.wait_for(flood[1], 1.0)
        assert info.value.status == 429
        flood[0].cancel()
        await asyncio.gather(flood[0], return_exceptions=True)
        pool.free = 1
        adm.wake("g")
        (await asyncio.wait_for(light, 1.0)).release()

    async def test_waiting_too_long_gives_503(self) -> None:
        """A waiter not served within max_wait_s gets 503 and leaves the queue."""
        pool, adm = Pool(0), admission(max_wait_s=0.05, retry_after_s=3)
        with pytest.raises(Rejected) as info:
            await adm.admit("g", "t", pool.picker("t"))
        assert info.value.status == 503
        assert info.value.retry_after_s == 3
        assert adm.waiting("g") == 0

    async def test_client_gone_leaks_nothing(self) -> None:
        """A waiter cancelled after being granted gives its slot on to the next waiter."""
        pool, adm = Pool(1), admission()
        first = await adm.admit("g", "a", pool.picker("a"))
        gone = asyncio.create_task(adm.admit("g", "b", pool.picker("gone")))
        after = asyncio.create_task(adm.admit("g", "c", pool.picker("after")))
        await settle()
        first.release()  # grants "gone" synchronously...
        gone.cancel()  # ...whose client leaves before its task runs
        await asyncio.gather(gone, return_exceptions=True)
        ticket: Ticket[Held] = await asyncio.wait_for(after, 1.0)
        assert pool.served == ["a", "gone", "after"]
        assert pool.free == 0
        ticket.release()
        assert pool.free == 1
        assert adm.waiting("g") == 0


class TestWakeAll:
    """Capacity from outside (a report, a new node) reaches every waiting queue."""

    async def test_wake_all_serves_each_queue(self) -> None:
        """Waiters on two keys are both served when room appears and wake_all runs."""
        pool, adm = Pool(0), admission()
        a = asyncio.create_task(adm.admit("g/m1", "t", pool.picker("m1")))
        b = asyncio.create_task(adm.admit("g/m2", "t", pool.picker("m2")))
        await settle()
        pool.free = 2
        adm.wake_all()
        tickets = await asyncio.wait_for(asyncio.gather(a, b), 1.0)
        assert sorted(pool.served) == ["m1", "m2"]
        for ticket in tickets:
            ticket.release()
