"""Open-loop arrivals: one Poisson schedule per load-generating process, shared by its users.

Each user asks :meth:`Pacer.take` for the next due time and sleeps until then; when every user
was busy the request goes out late, and that lateness (the dispatch lag) is recorded, since a
lagging generator turns an open loop back into a closed one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Pacer:
    """Poisson arrival times at ``rate`` per second (exponential gaps), from the first call."""

    def __init__(
        self, rate: float, rng: random.Random, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._rng = rng
        self._clock = clock
        self._next: float | None = None

    def take(self) -> float:
        """The clock time the next request is due."""
        if self._next is None:
            self._next = self._clock()
        due = self._next
        self._next += self._rng.expovariate(self.rate)
        return due
