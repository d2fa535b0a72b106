"""A backend's answer as the agent holds it: the request's accounting and, for a handler that
translates between APIs, the answer held open to read whole or line by line.

Lines are cut from the lean client's pieces (``UpstreamResponse.readany``)
as they come, however the backend split them; a line over :data:`MAX_LINE` is a bad answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from node_protocol.upstream import UpstreamResponse

from .errors import BackendBadAnswer, BackendTimeout, BackendUnreachable
from .metrics import CLIENT_GONE
from .traffic import TrafficStats

# aiohttp's line limit (twice its 64 KiB read buffer): a longer line is not an answer.
MAX_LINE = 128 * 1024


@dataclass(slots=True)
class Track:
    """One request's accounting: its route label, status and timings."""

    path: str
    start: float
    status: int = 500
    failed: bool = True
    headers_s: float | None = None
    first_byte_s: float | None = None

    def since_start(self) -> float:
        return time.perf_counter() - self.start


class Upstream:
    """A backend answer held open for a translating handler (:meth:`BackendProxy.opened`).

    Until the first bytes of the body come, a read may take the first-byte timeout (a backend
    may send its headers before it starts generating); after, the idle timeout. Errors come as
    :class:`AgentError` s, so a handler can raise them before it answers and write them into its
    own stream after.
    """

    __slots__ = ("_buffer", "_first_byte_s", "_idle_s", "_scanned", "_stats", "_track", "response")

    def __init__(
        self,
        response: UpstreamResponse,
        track: Track,
        stats: TrafficStats,
        *,
        first_byte_s: float,
        idle_s: float,
    ) -> None:
        self.response = response
        self._track = track
        self._stats = stats
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        self._buffer = bytearray()  # what arrived past the last line handed out
        self._scanned = 0  # how much of the buffer is known to hold no newline

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "")

    async def read(self) -> bytes:
        """The whole body (what is left of it after :meth:`readline`)."""
        rest = await self._timed(self.response.read(), "answer")
        if not self._buffer:
            return rest
        head = bytes(self._buffer)
        self._buffer.clear()
        return head + rest

    async def readline(self) -> bytes:
        """The next line of the body as it arrives (the last one may lack its newline); ``b""``
        at its end. A line over :data:`MAX_LINE` is a bad answer."""
        return await self._timed(self._line(), "stream")

    async def _line(self) -> bytes:
        buffer = self._buffer
        while (end := buffer.find(b"\n", self._scanned)) < 0:
            if len(buffer) > MAX_LINE:
                raise BackendBadAnswer(f"backend sent an oversized line (over {MAX_LINE} bytes)")
            self._scanned = len(buffer)
            chunk = await self.response.readany()
            if not chunk:  # the end: whatever is left is the last line
                line = bytes(buffer)
                buffer.clear()
                self._scanned = 0
                return line
            buffer += chunk
        if end >= MAX_LINE:
            raise BackendBadAnswer(f"backend sent an oversized line (over {MAX_LINE} bytes)")
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        self._scanned = 0
        return line

    async def _timed(self, read: Awaitable[bytes], what: str) -> bytes:
        started = self._track.first_byte_s is not None
        try:
            async with asyncio.timeout(self._idle_s if started else self._first_byte_s):
                data = await read
        except TimeoutError as exc:
            raise BackendTimeout(f"backend stalled mid-{what}") from exc
        except OSError as exc:  # UpstreamBroken is one
            raise BackendUnreachable(f"backend dropped the {what}: {exc}") from exc
        if data and self._track.first_byte_s is None:
            self._track.first_byte_s = self._track.since_start()
        return data

    def add_tokens(self, count: int) -> None:
        """Output tokens the handler counted in the answer."""
        self._stats.add_tokens(count)

    def finish(self, *, failed: bool) -> None:
        """The handler's verdict: ``failed`` when the backend failed the request."""
        self._track.failed = failed or self.status >= 500

    def client_gone(self) -> None:
        """The client went away mid-answer (the backend is stopped on exit)."""
        self._track.status = CLIENT_GONE
        self._track.failed = False
