"""Counters the proxy keeps and the reporter reads: requests in flight and output tokens.

Kept deliberately cheap (plain int arithmetic on the proxy path); the reporter turns the token
total into a rate over a sliding window of its own samples.
"""

from __future__ import annotations

import asyncio
from collections import deque


class TrafficStats:
    """Exact in-flight count, a running output-token total and a 'something changed' hint."""

    __slots__ = ("_failed", "_in_flight", "changed", "output_tokens", "requests_total")

    def __init__(self) -> None:
        self._in_flight = 0
        self._failed = False
        self.output_tokens = 0
        self.requests_total = 0
        # Set by the proxy when the backend's state may have changed (a request finished, so a
        # model may have loaded, or the backend failed); the reporter may then look at once
        # instead of at its next tick.
        self.changed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        self._in_flight += 1
        self.requests_total += 1

    def leave(self) -> None:
        if self._in_flight > 0:
            self._in_flight -= 1

    def hint(self, *, failure: bool) -> None:
        """A request ended; ``failure`` when the backend failed it (unreachable, 5xx, cut)."""
        if failure:
            self._failed = True
        self.changed.set()

    def take_failure(self) -> bool:
        """Whether a failure was hinted since the last call."""
        failed, self._failed = self._failed, False
        return failed

    def add_tokens(self, count: int) -> None:
        self.output_tokens += count


class TokenRate:
    """Output tokens per second over a sliding window of (time, total) samples."""

    __slots__ = ("_samples", "_window_s")

    def __init__(self, window_s: float = 10.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> float | None:
        """Record the running total at ``now`` (monotonic) and return the windowed rate.

        None when nothing was generated in the window: an idle node's speed is unknown, not 0.
        """
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        first_t, first_total = self._samples[0]
        elapsed = now - first_t
        produced = total - first_total
        if elapsed <= 0 or produced <= 0:
            return None
        return produced / elapsed
