"""Whether a node keeps a connection open after a streamed answer, learnt per node.

Some servers close the connection right after a chunked (streamed) answer although its headers
say it is kept alive: llama.cpp's server does so after every stream. A client that takes the
connection back at once can write the next request on it before the node's close arrives; the
request then fails as closed before any answer, and a POST may not be written again (the node
may have read it). So after a streamed answer a connection is reused only once the node is known
to keep such connections:

- not known yet: the connection is watched, not reused. Still open ``PROBE_S`` after the answer
  ended, it shows the node keeps them (it joins the kept ones); closed by the node before that,
  it shows the node closes them.
- known to keep them: it is kept at once, like any other.
- known to close them: it is closed at once (the next request opens a new connection).

Answers with a length are not concerned: the nodes seen close those only when they say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .connection import Connection, State

# A node that closes after a stream does so as it writes the stream's end; a quarter second
# leaves room for a node process that is not scheduled at once on a busy machine.
PROBE_S = 0.25

Origin = TypeVar("Origin", bound=Hashable)


class StreamKeeping(Generic[Origin]):
    """What each node origin does with a connection after a streamed answer, and the
    connections watched until that is known. ``limit``: the most watched per origin;
    ``keep_idle_s``: the pool's; ``keep``: takes a watched connection into the pool."""

    def __init__(
        self, limit: int, keep_idle_s: float, keep: Callable[[Origin, Connection], None]
    ) -> None:
        self._keeps: dict[Origin, bool] = {}
        self._watched: dict[Origin, list[Connection]] = {}
        self._limit, self._keep_idle_s, self._keep = limit, keep_idle_s, keep
        self._timer: asyncio.TimerHandle | None = None

    def keeps(self, origin: Origin) -> bool | None:
        """True or False once known, None until then."""
        return self._keeps.get(origin)

    def watch(self, origin: Origin, conn: Connection) -> None:
        """``conn`` (parked) ended a streamed answer from a node not known yet."""
        watched = self._watched.setdefault(origin, [])
        if len(watched) >= self._limit:
            conn.close()
            return
        watched.append(conn)
        if self._timer is None:
            self._timer = conn.loop.call_later(PROBE_S, self._settle)

    def _settle(self) -> None:
        """Learn from the watched connections old enough to tell; those still open go to the
        pool (their node keeps such connections). The rest wait for the next round."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        kept: list[tuple[Origin, Connection]] = []
        for origin, watched in list(self._watched.items()):
            waiting = []
            for conn in watched:
                if conn.state is State.CLOSED:
                    if conn.lost_at - conn.idle_since < PROBE_S:
                        self._keeps[origin] = False
                elif now - conn.idle_since < PROBE_S:
                    waiting.append(conn)
                elif conn.can_send(now, self._keep_idle_s):
                    self._keeps.setdefault(origin, True)
                    kept.append((origin, conn))
                else:
                    conn.close()
            if waiting:
                self._watched[origin] = waiting
            else:
                del self._watched[origin]
        for origin, conn in kept:
            if self._keeps[origin]:
                self._keep(origin, conn)
            else:  # another of its connections was closed by the node
                conn.close()
        if self._watched:
            self._timer = loop.call_later(PROBE_S, self._settle)

    def forget(self, origin: Origin) -> None:
        """A node that is gone: what was learnt of it goes, its watched connections close."""
        self._keeps.pop(origin, None)
        for conn in self._watched.pop(origin, ()):
            conn.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for watched in self._watched.values():
            for conn in watched:
                conn.close()
        self._watched.clear()
