"""The calls to nodes: a lean HTTP/1.1 client on pooled keep-alive connections.

Every routed request is one POST to a node, answered by JSON or by a stream (the node agent's
calls to its backend use any method, with or without a body). aiohttp's client is general
(cookies, redirects, auth, tracing, multipart, ...) and on a short request it cost more than all
of the routing; this client does only what the forwarder needs, on ``httptools`` (the llhttp C
parser): the request goes out in one write, the answer's headers, then its body chunks as they
arrive, with back-pressure. Every wait is bounded: ``connect_s`` for a new connection,
``idle_s`` for the headers and between chunks, ``total_s`` for the whole call. Each connection
is a state machine (:mod:`node_protocol.connection`): interim 1xx answers are skipped, a body
belongs to exactly one request, and a connection goes back to its pool only when its answer was
read to the end and the node keeps it alive.

When a request is written again, and when never (a node may crash on a request: it must not
be sent to that node twice once the node may have started on it):

- Before a kept connection carries a request it must be idle with nothing heard from the node
  since its last answer (no byte, no EOF, no reset: the connection watches while it waits, and a
  zero-timeout poll of the socket catches what the event loop has not read yet), and idle for
  less than ``keep_idle_s``, shorter than the usual servers' own keep-alive timeouts, so the
  node does not close it as the request goes out. One that fails is closed and the next one
  tried: the request was never written on it. After a streamed answer a connection is kept only
  once its node is known to keep those (:mod:`node_protocol.stream_keeping`): some close them
  as the stream ends, whatever their headers say.
- Once written, a request is written again only when (1) it went out on a kept connection,
  (2) the node closed that connection before any byte of an answer, and (3) its method is one
  that HTTP defines as idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), where a second run
  does no harm. It then goes once more, on a new connection. Anything else, a POST above all,
  fails with :class:`ClosedBeforeAnswer`: a node fault before the first byte, which a caller may
  take to another node. A timeout is never retried here.

Idle connections are closed in the background once idle for ``keep_idle_s``; a pool keeps at
most ``MAX_IDLE_PER_NODE`` per node, and :meth:`UpstreamPool.forget` closes a gone node's.

Errors::

    ConnectionError
     └── UpstreamBroken           the node closed the connection or sent something not HTTP
          └── ClosedBeforeAnswer  ... after the request went out, before any byte of an answer
    TimeoutError
     └── ConnectTimeout           no connection within ``connect_s`` (nothing was sent)
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .connection import HIGH_WATER, ClosedBeforeAnswer, Connection, State, UpstreamBroken
from .stream_keeping import StreamKeeping

__all__ = [
    "HIGH_WATER",
    "KEEP_IDLE_S",
    "MAX_IDLE_PER_NODE",
    "CallLimits",
    "ClosedBeforeAnswer",
    "ConnectTimeout",
    "UpstreamBroken",
    "UpstreamPool",
    "UpstreamResponse",
]

MAX_IDLE_PER_NODE = 256
# Below the shortest keep-alive timeout common servers use (5 s: uvicorn, Node.js, llama.cpp's
# httplib), with room for the node's timer starting before the client's.
KEEP_IDLE_S = 3.0
_BODYLESS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


class ConnectTimeout(TimeoutError):
    """No connection to the node within ``connect_s`` (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class CallLimits:
    connect_s: float
    idle_s: float
    total_s: float


# Equal only to itself, hashed by identity (in C: kept connections are looked up by origin on
# every request): the pool makes one per base URL, and forgets it with its URL.
@dataclass(frozen=True, slots=True, eq=False)
class _Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # a base URL's own path, e.g. "/v1" of "http://box:8000/v1"

    @classmethod
    def parse(cls, base_url: str) -> _Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def message(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        """The request, head and body in one piece (one write). A ``None`` body on a method
        that takes none goes without a Content-Length, as aiohttp sends it."""
        lines = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is None and method in _BODYLESS:
            lines.append("\r\n")
        else:
            lines.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        head = "\r\n".join(lines).encode("latin-1")
        return head + body if body else head


class UpstreamResponse:
    """A node's answer: status and headers at once, the body as it arrives.

    Once the answer has let go of its connection (read to its end, or closed), nothing here
    touches that connection again: it may carry another request by then."""

    def __init__(self, pool: UpstreamPool, origin: _Origin, conn: Connection) -> None:
        self._pool, self._origin, self._conn = pool, origin, conn
        self._body: bytes | None = None
        self._released = False  # the connection went back to the pool, or was closed
        self._ended = False  # ... after the whole body was read
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers  # lower-case names

    def _timeout(self) -> float:
        conn = self._conn
        left = conn.total_deadline - conn.loop.time()
        if left <= 0:
            raise TimeoutError("the node's answer took longer than the total bound")
        return min(conn.idle_s, left)

    def pace(self, idle_s: float) -> None:
        """Wait at most ``idle_s`` for each next piece of the body from now on (the call's own
        ``idle_s`` bounds the wait for the headers and, unless paced, for the body)."""
        if not self._released:
            self._conn.idle_s = idle_s

    def push_to(self, sink: Callable[[bytes], bool] | None) -> None:
        """From now on, hand each piece of the body to ``sink`` as soon as it is parsed, with
        no task switch in between; a piece the sink refuses (returns False) is queued, and it
        and the rest come through :meth:`readany` until the queue is empty again. ``None``
        stops it. :meth:`readany` still reports the end, errors and timeouts."""
        if not self._released:
            self._conn.sink = sink

    @property
    def finished(self) -> bool:
        """The whole body has arrived and been read."""
        if self._released:
            return self._ended
        return self._conn.complete and not self._conn.chunks

    async def readany(self) -> bytes:
        """What has arrived of the body since the last call (waiting for the next piece when
        nothing has); ``b""`` at its end."""
        if self._released:
            if self._ended:
                return b""
            raise UpstreamBroken("the answer was closed before its end")
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None:
                self.close()
                raise conn.error
            if conn.complete:
                self._released = self._ended = True
                self._pool.give_back(self._origin, conn)
                return b""
            try:
                await conn.wait(self._timeout())
            except TimeoutError:
                self.close()  # a stalled answer leaves its connection unusable
                raise
        return conn.pop_body()

    async def read(self) -> bytes:
        """The whole body (kept: a second call returns it again)."""
        if self._body is None:
            parts = []
            while chunk := await self.readany():
                parts.append(chunk)
            self._body = b"".join(parts)
        return self._body

    async def read_some(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (an error answer's detail)."""
        parts, size = [], 0
        while size < limit and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    def close(self) -> None:
        """Done with the answer: the connection goes back when the answer was read to its end,
        and is closed otherwise (a node still generating stops)."""
        if self._released:
            return
        conn = self._conn
        self._released = True
        self._ended = conn.complete and not conn.chunks
        if conn.reusable:
            self._pool.give_back(self._origin, conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections by node origin; ``request`` (or ``post``) sends one request.

    ``keep_idle_s``: how long a connection may wait idle before it is closed, not reused."""

    def __init__(
        self, ssl_context: ssl.SSLContext | None = None, *, keep_idle_s: float = KEEP_IDLE_S
    ) -> None:
        self._idle: dict[_Origin, list[Connection]] = {}  # each list oldest first
        self._origins: dict[str, _Origin] = {}
        self._ssl = ssl_context
        self._keep_idle_s = keep_idle_s
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._streams: StreamKeeping[_Origin] = StreamKeeping(
            MAX_IDLE_PER_NODE, keep_idle_s, self._keep
        )
        self._closed = False
        # The pool's loop, looked up once: asyncio.get_running_loop() makes a system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def origin(self, base_url: str) -> _Origin:
        found = self._origins.get(base_url)
        if found is None:
            found = self._origins[base_url] = _Origin.parse(base_url)
        return found

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        limits: CallLimits,
    ) -> UpstreamResponse:
        """Send ``body`` to ``base_url + path``; returns once the answer's headers are in."""
        return await self.request("POST", base_url, path, body, headers, limits)

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        limits: CallLimits,
    ) -> UpstreamResponse:
        """Send ``method`` to ``base_url + path`` (already URL-encoded, with any query string);
        returns once the final answer's headers are in. Written again only as the module says.
        """
        origin = self.origin(base_url)
        message = origin.message(method, path, body, headers)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + limits.total_s  # the whole call, headers and body
        conn = self._kept(origin, now)
        if conn is not None:
            try:
                return await self._exchange(origin, conn, method, message, limits, deadline)
            except ClosedBeforeAnswer:
                if method not in _IDEMPOTENT:
                    raise  # the node may have started on it: never twice
        conn = await self._connect(origin, limits.connect_s)
        return await self._exchange(origin, conn, method, message, limits, deadline)

    async def _exchange(
        self,
        origin: _Origin,
        conn: Connection,
        method: str,
        message: bytes,
        limits: CallLimits,
        deadline: float,
    ) -> UpstreamResponse:
        """Write the request on ``conn`` and wait for the final answer's headers."""
        loop = conn.loop
        try:
            conn.send(message, head_only=method == "HEAD")
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(min(limits.idle_s, max(0.0, deadline - loop.time())))
        except BaseException:
            conn.close()
            raise
        conn.idle_s, conn.total_deadline = limits.idle_s, deadline
        return UpstreamResponse(self, origin, conn)

    def _kept(self, origin: _Origin, now: float) -> Connection | None:
        """The most recently kept connection that can carry a request now; the ones that
        cannot (expired, closed or spoken on by the node) are closed on the way."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.can_send(now, self._keep_idle_s):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, timeout_s: float) -> Connection:
        loop = asyncio.get_running_loop()
        use_ssl = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            use_ssl = self._ssl
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    Connection, origin.host, origin.port, ssl=use_ssl
                )
        except TimeoutError as exc:
            where = origin.host_header
            raise ConnectTimeout(f"no connection to {where} in {timeout_s:g}s") from exc
        return conn

    def give_back(self, origin: _Origin, conn: Connection) -> None:
        """Keep ``conn`` for the next request to ``origin`` if it can carry one (after a
        streamed answer, only once the node is known to keep such connections)."""
        idle = self._idle.get(origin)
        full = idle is not None and len(idle) >= MAX_IDLE_PER_NODE
        if self._closed or not conn.reusable or full:
            conn.close()
            return
        conn.park(conn.loop.time())
        if "chunked" in conn.headers.get("transfer-encoding", ""):
            keeps = self._streams.keeps(origin)
            if not keeps:
                if keeps is None:
                    self._streams.watch(origin, conn)
                else:
                    conn.close()
                return
        self._keep(origin, conn)

    def _keep(self, origin: _Origin, conn: Connection) -> None:
        self._idle.setdefault(origin, []).append(conn)
        if self._expiry_timer is None and not self._closed:
            self._expiry_timer = conn.loop.call_later(self._keep_idle_s / 2, self._close_expired)

    def _close_expired(self) -> None:
        """Close the connections idle for ``keep_idle_s`` or closed meanwhile; runs every half
        ``keep_idle_s`` while any are kept."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._keep_idle_s
        self._expiry_timer = None
        for origin, idle in list(self._idle.items()):
            live = []
            for conn in idle:
                if conn.state is State.IDLE and conn.idle_since > cutoff:
                    live.append(conn)
                else:
                    conn.close()
            if live:
                idle[:] = live
            else:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._expiry_timer = loop.call_later(self._keep_idle_s / 2, self._close_expired)

    def forget(self, base_url: str) -> None:
        """A node that is gone: close the connections kept for ``base_url`` and drop what the
        pool knew of it (a connection still carrying an answer closes when it expires)."""
        origin = self._origins.pop(base_url, None)
        if origin is not None:
            self._streams.forget(origin)
            for conn in self._idle.pop(origin, ()):
                conn.close()

    def close(self) -> None:
        self._closed = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._streams.close()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
