"""One keep-alive HTTP/1.1 connection to a node: a state machine over the llhttp parser.

One request at a time, never pipelined; each state says what the bytes from the node may be::

    IDLE ─send─▶ SENT ─first byte─▶ HEADERS ─final headers─▶ BODY ─its end─▶ DONE ─park─▶ IDLE
                                      │   ▲         └──(an answer to HEAD)───────▶ DONE
                                      └───┘ an interim (1xx) answer, dropped whole
    any state ─ a close, EOF or reset; bad HTTP; a byte no request asked for ─▶ CLOSED

- ``IDLE``: open, no request on it (new, or kept in a pool). Anything from the node now, a
  byte, EOF or a reset, means it cannot carry a request: it goes CLOSED at once.
- ``SENT``: a request went out in one write; no byte of its answer yet. A close here raises
  :class:`ClosedBeforeAnswer`: the node may have read the request, or not.
- ``HEADERS``: an answer's status line and headers are arriving. 1xx answers are interim: their
  status and headers are dropped and the final answer is awaited on the same connection (101,
  a protocol switch no request of ours asks for, breaks it).
- ``BODY``: the final answer's status and headers are in; its body arrives, chunked encoding
  decoded and trailers ignored. A body with neither a length nor chunking ends with a clean
  close of the connection.
- ``DONE``: the final answer has ended. It may be kept only if the node keeps it alive (1.1
  without ``Connection: close``; 1.0 with ``keep-alive``) and the whole request had left before
  the answer ended (a node that answered early may not have read the rest of the body).
- ``CLOSED``: never used again. The answer's outcome stays readable (``complete``, ``error``).

Body pieces queue up for the reader; past ``HIGH_WATER`` queued bytes reading from the node
stops until the reader catches up. One timer per connection bounds the reader's waits; it is
re-armed lazily, not made and cancelled per piece.
"""

from __future__ import annotations

import asyncio
import enum
import math
import select
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

HIGH_WATER = 256 * 1024


class UpstreamBroken(ConnectionError):
    """The node closed the connection or sent something that is not HTTP."""


class ClosedBeforeAnswer(UpstreamBroken):
    """The node closed the connection after the request went out, before any byte of an
    answer: it may have read the request and started on it."""


class State(enum.Enum):
    IDLE = "idle"
    SENT = "sent"
    HEADERS = "headers"
    BODY = "body"
    DONE = "done"
    CLOSED = "closed"


IDLE, SENT, HEADERS, BODY, DONE, CLOSED = State  # compared by identity on every event


class Connection(asyncio.Protocol):
    """One keep-alive connection to a node (see the module's states)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = CLOSED  # until connected
        self.idle_since = 0.0
        self.lost_at = math.inf  # when the connection was lost
        self._parser = httptools.HttpResponseParser(self)
        self._pending: select.poll | None = None  # asks the socket, not the loop, what came
        self._head_only = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.chunks: deque[bytes] = deque()
        self._parsed: list[bytes] = []
        self._reset()

    def _reset(self) -> None:
        """What one request's answer fills in."""
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.buffered = 0
        self._paused = False
        self._reason_bytes = b""
        # Push mode (see UpstreamResponse.push_to): pieces go straight to ``sink`` as they are
        # parsed, each one moving the idle deadline (never past the total one).
        self.sink: Callable[[bytes], bool] | None = None
        self.idle_s = 0.0
        self.total_deadline = 0.0

    # Requests: IDLE -> SENT, DONE -> IDLE
    def can_send(self, now: float, keep_idle_s: float) -> bool:
        """IDLE for less than ``keep_idle_s``, with nothing from the node since: not even what
        the event loop has not read yet (a FIN, a reset or a stray byte in the socket)."""
        transport = self.transport
        return (
            self.state is IDLE
            and now - self.idle_since < keep_idle_s
            and transport is not None
            and not transport.is_closing()
            and not (self._pending is not None and self._pending.poll(0))
        )

    def send(self, message: bytes, *, head_only: bool) -> None:
        """IDLE -> SENT: the request goes out in one write. ``head_only``: the answer has no
        body whatever its headers say (an answer to HEAD)."""
        if self.state is not IDLE or self.transport is None:  # a new one the node closed at once
            raise UpstreamBroken("the node closed the connection before the request went out")
        self._reset()
        self._head_only = head_only
        self.state = SENT
        self.transport.write(message)

    @property
    def reusable(self) -> bool:
        """DONE, kept alive by the node, and every byte of the answer handed over."""
        transport = self.transport
        return (
            self.state is DONE
            and self.keep_alive
            and not self.chunks
            and transport is not None
            and not transport.is_closing()
        )

    def park(self, now: float) -> None:
        """DONE -> IDLE, kept from ``now``."""
        self.state = IDLE
        self.idle_since = now
        self.sink = None

    def close(self) -> None:
        """-> CLOSED; an answer not yet ended ends as broken (a reader waiting wakes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.complete:
            self._shut()
        else:
            self._fail(UpstreamBroken("the answer was closed before its end"))

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.state = IDLE
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._pending = select.poll()
            self._pending.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is IDLE or state is DONE:
            self._fail(UpstreamBroken("the node sent bytes no request asked for"))
            return
        if state is CLOSED:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamBroken(f"bad HTTP from the node: {exc!r}"))
        if self._parsed:  # what this read held goes to the sink in one piece: one write
            self._to_sink()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = CLOSED
        self.transport = None
        self.lost_at = self.loop.time()
        if state is BODY and exc is None and self._ends_with_close():
            self._end(keep_alive=False)  # a body that ends when the connection does
        elif state is SENT:
            self._fail(ClosedBeforeAnswer("the node closed the connection before answering"))
        elif state is HEADERS or state is BODY:
            self._fail(UpstreamBroken("the node closed the connection mid-answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.state is SENT:
            self.state = HEADERS
        elif self.state is DONE:
            self._fail(UpstreamBroken("the node sent a second answer to one request"))

    def on_status(self, status: bytes) -> None:
        if self.state is HEADERS:
            self._reason_bytes += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state is not HEADERS:
            return  # a chunked body's trailers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if self.state is not HEADERS:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101 or status < 100:
                self._fail(UpstreamBroken(f"the node answered {status}, not a final answer"))
            else:  # interim: its headers go, the final answer comes next (no wake-up: the
                # wait for the final headers keeps its bound)
                self.headers = {}
                self._reason_bytes = b""
            return
        self.status = status
        self.reason = self._reason_bytes.decode("latin-1")
        self.headers_done = True
        if self._head_only:
            # This parser would wait for the body the headers announce; the next answer gets a
            # new one, and anything more on this one is a byte no request asked for.
            self._end(self._parser.should_keep_alive())
            self._parser = httptools.HttpResponseParser(self)
        else:
            self.state = BODY
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.state is BODY:
            if self.sink is not None and not self.chunks:
                self._parsed.append(body)  # handed over once the whole read is parsed
            else:
                self._queue(body)
        elif self.state is DONE:
            self._fail(UpstreamBroken("the node sent a body with an answer that has none"))

    def on_message_complete(self) -> None:
        if self.state is BODY:
            self._end(self._parser.should_keep_alive())
        # in HEADERS it was an interim answer's end: the final one is still to come

    # the answer
    def _end(self, keep_alive: bool) -> None:
        """-> DONE (or stays CLOSED): the final answer has ended."""
        transport = self.transport
        self.keep_alive = (
            keep_alive and transport is not None and transport.get_write_buffer_size() == 0
        )
        self.complete = True
        if self.state is not CLOSED:
            self.state = DONE
        self._wake()

    def _ends_with_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _fail(self, exc: Exception) -> None:
        """-> CLOSED; an answer not yet ended ends with ``exc``."""
        if not self.complete and self.error is None:
            self.error = exc
        self._shut()

    def _shut(self) -> None:
        """-> CLOSED, and a reader waiting wakes to find out."""
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _to_sink(self) -> None:
        parsed = self._parsed
        body = parsed[0] if len(parsed) == 1 else b"".join(parsed)
        parsed.clear()
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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pop_body(self) -> bytes:
        """Everything of the body that has arrived, in one piece (one write to the client, not
        one per event: nothing waits for more to come)."""
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
