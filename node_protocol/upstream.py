"""The calls to nodes: a lean HTTP/1.1 client on pooled keep-alive connections.

Every routed request is one POST to a node, answered by JSON or by a stream (the node agent's
calls to its backend use any method but HEAD, with or without a body). aiohttp's client is
general (cookies, redirects, auth, tracing, multipart, …) and on a short request it cost more
than all of the routing; this client does only what the forwarder needs, on ``httptools`` (the
llhttp C parser): the request goes out in one write, the answer's headers, then its body chunks
as they arrive (chunked encoding decoded), with back-pressure (reading stops while
``HIGH_WATER`` bytes wait for a slow client). Every wait is bounded: ``connect_s`` for a new
connection, ``idle_s`` for the headers and between chunks, ``total_s`` for the whole call.

A connection goes back to its pool only when its answer was read to the end and the node keeps
it alive. A kept connection the node closed meanwhile shows as a failure before any byte of the
answer; the request is then sent once more on a new connection (it never reached the node).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
MAX_IDLE_PER_NODE = 256
_BODYLESS = frozenset(("GET", "OPTIONS", "TRACE"))


class UpstreamBroken(ConnectionError):
    """The node closed the connection or sent something that is not HTTP."""


class ConnectTimeout(TimeoutError):
    """No connection to the node within ``connect_s`` (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class CallLimits:
    connect_s: float
    idle_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
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


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.loop = asyncio.get_running_loop()
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._paused = False
        self._reason_bytes = b""
        # Push mode (see UpstreamResponse.push_to): pieces go straight to ``sink`` as they are
        # parsed, each one moving the idle deadline (never past the total one).
        self.sink: Callable[[bytes], bool] | None = None
        self._parsed: list[bytes] = []
        self.idle_s = 0.0
        self.total_deadline = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"bad HTTP from the node: {exc}"))
        if self._parsed:  # what this read held goes to the sink in one piece: one write
            self._to_sink()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.headers_done and not self.complete and self._reads_to_close():
            self.complete = True  # a body that ends when the connection does
            self._wake()
        elif not self.complete:
            self._fail(UpstreamBroken("the node closed the connection"))
        self.transport = None

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._reason_bytes += status

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.reason = self._reason_bytes.decode("latin-1")
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.chunks:
            self._parsed.append(body)  # handed over once the whole read is parsed
            return
        self._queue(body)

    def _to_sink(self) -> None:
        parsed, self._parsed = self._parsed, []
        body = parsed[0] if len(parsed) == 1 else b"".join(parsed)
        if self.sink is not None and self.sink(body):
            self._deadline = min(self.loop.time() + self.idle_s, self.total_deadline)
        else:
            self._queue(body)

    def _queue(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # for the response
    def _reads_to_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        """Everything that has arrived, in one piece (one write to the client, not one per
        event: nothing waits for more to come)."""
        chunks = self.chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def wait(self, timeout_s: float) -> None:
        """Until the parser has something new, at most ``timeout_s``. One timer per connection
        is re-armed lazily (a stream waits once per chunk: no timer made and cancelled each
        time); it fails the wait only once the latest deadline has passed."""
        loop = self.loop
        waiter = self._waiter = loop.create_future()
        deadline = self._deadline = loop.time() + timeout_s
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits now: the next wait arms a timer again
        loop = self.loop
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body)

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and not self.chunks
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """A node's answer: status and headers at once, the body as it arrives."""

    def __init__(self, pool: UpstreamPool, origin: _Origin, conn: _Connection) -> None:
        self._pool, self._origin, self._conn = pool, origin, conn
        self._body: bytes | None = None
        self._released = False
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
        self._conn.idle_s = idle_s

    def push_to(self, sink: Callable[[bytes], bool] | None) -> None:
        """From now on, hand each piece of the body to ``sink`` as soon as it is parsed, with
        no task switch in between; a piece the sink refuses (returns False) is queued, and it
        and the rest come through :meth:`readany` until the queue is empty again. ``None``
        stops it. :meth:`readany` still reports the end, errors and timeouts."""
        self._conn.sink = sink

    @property
    def finished(self) -> bool:
        """The whole body has arrived and been read."""
        return self._conn.complete and not self._conn.chunks

    async def readany(self) -> bytes:
        """What has arrived of the body since the last call (waiting for the next piece when
        nothing has); ``b""`` at its end."""
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None:
                self.close()
                raise conn.error
            if conn.complete:
                self._release()
                return b""
            try:
                await conn.wait(self._timeout())
            except TimeoutError:
                self.close()  # a stalled answer leaves its connection unusable
                raise
        return conn.take()

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

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.give_back(self._origin, self._conn)

    def close(self) -> None:
        """Done with the answer: the connection goes back when the answer was read to its end,
        and is closed otherwise (a node still generating stops)."""
        if not self._released:
            self._released = True
            if self._conn.reusable:
                self._pool.give_back(self._origin, self._conn)
            else:
                self._conn.close()


class UpstreamPool:
    """Keep-alive connections by node origin; ``request`` (or ``post``) sends one request."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._ssl = ssl_context
        self._closed = False

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
        returns once the answer's headers are in. A ``None`` body on a method that takes none
        (GET, OPTIONS, TRACE) goes without a Content-Length, as aiohttp sends it. HEAD is not
        supported: the parser would wait for the body its answer announces."""
        if method == "HEAD":
            raise ValueError("HEAD is not supported")
        origin = self.origin(base_url)
        lines = [f"{method} {origin.prefix}{path} HTTP/1.1", f"Host: {origin.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is None and method in _BODYLESS:
            lines.append("\r\n")
        else:
            lines.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        head = "\r\n".join(lines).encode("latin-1")
        payload = body or b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.total_s  # the whole call, headers and body
        while True:
            conn, reused = self._idle_connection(origin), True
            if conn is None:
                conn, reused = await self._connect(origin, limits.connect_s), False
            conn.send(head, payload)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(min(limits.idle_s, max(0.0, deadline - loop.time())))
            except UpstreamBroken:
                conn.close()
                if reused and not conn.got_bytes:
                    continue  # the node had closed this kept connection: try a new one
                raise
            except BaseException:
                conn.close()
                raise
            conn.idle_s, conn.total_deadline = limits.idle_s, deadline
            return UpstreamResponse(self, origin, conn)

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, origin: _Origin, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        use_ssl = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            use_ssl = self._ssl
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=use_ssl
                )
        except TimeoutError as exc:
            where = origin.host_header
            raise ConnectTimeout(f"no connection to {where} in {timeout_s:g}s") from exc
        return conn

    def give_back(self, origin: _Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or not conn.reusable or len(idle) >= MAX_IDLE_PER_NODE:
            conn.close()
        else:
            idle.append(conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
