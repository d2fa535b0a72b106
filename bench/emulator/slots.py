"""A model's parallel slots: a first-come, first-served gate with hand-off on release."""

from __future__ import annotations

import asyncio
from collections import deque


class SlotGate:
    """``capacity`` requests run at once; the rest wait in arrival order.

    A released slot passes straight to the oldest waiter, so a newcomer can never overtake the
    queue (``asyncio.Semaphore`` on 3.11 does not promise that).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def can_enter_now(self) -> bool:
        return self.busy < self.capacity and not self._waiters

    async def acquire(self) -> None:
        if self.can_enter_now():
            self.busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand-off: busy stays the same
                return
        self.busy -= 1
