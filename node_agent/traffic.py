"""Counters the proxy keeps and the reporter reads: requests in flight and output tokens.

Kept deliberately cheap (plain int arithmetic on the proxy path); the reporter turns the token
total into a rate over a sliding window of its own samples. :class:`AnswerTokens` adds one
relayed answer's tokens to the total as they pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from node_protocol.events import AnswerReader, Surface

# A bigger whole (non-streamed) answer is relayed unread: only a header may count its tokens.
MAX_BODY_READ = 1024 * 1024


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


class AnswerTokens:
    """One relayed answer's output tokens, added to the stats as they come: a stream's pieces
    as they pass (corrected once the backend sends its exact count), a whole answer's exact
    count (else the ``x-generated-tokens`` header TGI sends) at its end."""

    __slots__ = ("_added", "_body", "_stats", "_streamed", "reader")

    def __init__(self, stats: TrafficStats, surface: Surface, *, streamed: bool) -> None:
        self.reader = AnswerReader(surface)
        self._stats = stats
        self._streamed = streamed
        self._added = 0
        self._body: bytearray | None = None
        if not streamed and surface is not Surface.NONE:
            self._body = bytearray()

    def take(self, chunk: bytes) -> None:
        """One relayed piece of the answer."""
        if self._streamed:
            self.reader.feed(chunk, time.perf_counter())
            self._settle()
        elif self._body is not None:
            if len(self._body) + len(chunk) <= MAX_BODY_READ:
                self._body += chunk
            else:
                self._body = None

    def end(self, generated_header: int | None) -> None:
        """The answer was relayed to its end."""
        reader = self.reader
        if self._streamed:
            reader.end(time.perf_counter())
        elif self._body is not None:
            reader.read_body(bytes(self._body), time.perf_counter())
        if not self._streamed and reader.usage_tokens is None and generated_header is not None:
            self._stats.add_tokens(generated_header - self._added)
            self._added = generated_header
        else:
            self._settle()

    def _settle(self) -> None:
        total = self.reader.output_tokens
        if total != self._added:
            self._stats.add_tokens(total - self._added)
            self._added = total
