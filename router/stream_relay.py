"""Relaying a node's stream to the client, piece by piece, and ending it properly.

The relay starts once the stream's first token is in hand (:mod:`router.first_token`): the
client's status line and headers then go out with it in one write.

Pieces go to the client's socket as the node's connection parses them
(:func:`router.client_socket.piece_writer`); a piece the client is not ready for goes through
the relay loop, which waits for the client (bounded: a client that stopped reading is dropped
and the node's generation cancelled). The node's last piece goes out with the end of the body.

A stream ends properly when the answer reader (:class:`node_protocol.events.AnswerReader`) saw
its surface's end (an OpenAI stream's finish reason and ``[DONE]``, Ollama's ``done``, ...) or
an error the node sent in it, other than the one an agent ends a stream with when its backend
broke off (:data:`~node_protocol.wire.STREAM_CUT_CODE`), which is a cut. A stream cut or ended
before its end is handed back to the forwarder as a
:class:`Cut` when it may be resumed elsewhere (:mod:`router.resume`); otherwise, or when no node
can continue it, it ends with an SSE error event and ``[DONE]`` (an NDJSON error line for
NDJSON), counted as cut. A node's ``[DONE]`` that comes before a proper end is held back: the
error event (or the continuation) goes before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from time import perf_counter

import orjson
from aiohttp import web

from node_protocol.events import AnswerReader, Surface
from node_protocol.surface_errors import anthropic_error_event, responses_error_event
from node_protocol.upstream import UpstreamResponse
from node_protocol.wire import STREAM_CUT_CODE
from router.aliases import apply_renaming
from router.client_socket import HeldResponse, has_backlog, piece_writer
from router.continuation import Transcript
from router.errors import envelope
from router.metrics import RouterMetrics
from router.records import RequestRecord
from router.registry import Node, Registry
from router.splice import Splicer

log = logging.getLogger("router.proxy")

Renaming = tuple[tuple[bytes, bytes], ...]
_DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")
_CUT_CODE = STREAM_CUT_CODE.encode()


def stream_error_event(message: str) -> bytes:
    event = envelope(message, "upstream_error", None, "stream_interrupted")
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


def _cut_notice(surface: Surface, content_type: str, message: str) -> bytes:
    """The end of a cut stream in its surface's own shape: Messages and Responses end with their
    ``error`` event (their SDKs raise on it; neither has ``[DONE]``), the other SSE surfaces
    with an OpenAI error event and ``[DONE]``, NDJSON with an error line."""
    if surface is Surface.ANTHROPIC:
        return anthropic_error_event(message, "api_error")
    if surface is Surface.RESPONSES:
        return responses_error_event(message, "stream_interrupted")
    if content_type.startswith("text/event-stream"):
        return stream_error_event(message)
    return orjson.dumps({"error": message}) + b"\n"


def _ends_with_done(data: bytes) -> bool:
    return data.rstrip().endswith(_DONE_MARKERS)


def _without_done(data: bytes) -> bytes:
    """``data`` less a final ``[DONE]`` event (the error event goes before it)."""
    stripped = data.rstrip()
    for marker in _DONE_MARKERS:
        if stripped.endswith(marker):
            return stripped[: -len(marker)]
    return data


def improper_end(answer: AnswerReader) -> str | None:
    """Why a stream whose body ended (all of it read) is not properly ended, or None when it
    is: it reached its surface's end, or carried the node's own error."""
    if answer.finished or answer.error is not None or answer.surface is Surface.NONE:
        return None
    if answer.tokens == 0 and answer.finish_reason is None:
        return "ended without sending anything"
    return "ended before its end"


def _before_cut_event(data: bytes) -> bytes | None:
    """What came before the agent's cut event (it says its backend dropped or stalled) that
    ends ``data``; None when ``data`` holds none."""
    if _CUT_CODE not in data:
        return None
    start = data.rfind(b'{"error"', 0, data.rfind(_CUT_CODE))
    return data[: data.rfind(b"\n", 0, max(start, 0)) + 1]


@dataclass(slots=True)
class Leg:
    """One node's part of the client's stream: its answer, the bytes read before its first
    token (``seen``: the record already read them), and, for a continuation, the splicer."""

    upstream: UpstreamResponse
    node: Node
    rename: Renaming | None
    held: bytes
    seen: bool
    splicer: Splicer | None = None


@dataclass(slots=True)
class Cut:
    """A stream cut (or ended early) after the client got part of the answer; the response is
    still open. ``pending``: bytes the client gets before whatever follows; ``whole``: the
    client then stands at the end of an event, where a continuation can start."""

    response: web.StreamResponse
    node: Node
    fault: str
    pending: bytes
    whole: bool
    transcript: Transcript


class _Pieces:
    """One leg's pieces on their way to the client: spliced (a continuation), read by the
    record, kept for a resume, renamed; ``held``: read but kept back for the relay loop.
    Per piece on every stream: the code is inlined where a call would cost as much."""

    __slots__ = (
        "answer", "check_done", "held", "record", "rename", "splicer", "transcript", "upstream",
    )  # fmt: skip

    def __init__(
        self, record: RequestRecord, leg: Leg, done_marker: bool, transcript: Transcript | None
    ) -> None:
        self.record = record
        self.answer = record.answer
        self.rename = leg.rename
        self.splicer = leg.splicer
        self.upstream = leg.upstream
        self.check_done = done_marker  # an OpenAI stream: its [DONE] waits for the loop
        self.transcript = transcript
        self.held = b""

    def account(self, piece: bytes) -> bytes:
        if self.splicer is not None:
            piece = self.splicer.feed(piece)
        self.record.watch(piece, perf_counter())
        kept = self.transcript
        if kept is not None:
            kept.room -= len(piece)
            if kept.room >= 0:
                kept.parts.append(piece)
        return piece if self.rename is None else apply_renaming(piece, self.rename)

    def direct(self, piece: bytes) -> bytes:
        """For the socket writer: the bytes to send now, or nothing when the piece is kept back
        for the relay loop (and with it the rest of the stream): one with an error, which may
        tell of a cut, or one that may end with ``[DONE]`` before the answer's proper end (its
        ``]`` where an LF or CRLF blank line would follow; the loop checks exactly), which the
        error event or a continuation must precede. Inlined: this runs for every piece."""
        data = self.account(piece)
        answer = self.answer
        if answer.error is None:
            if not self.check_done or answer.finished:
                return data
            n = len(piece)
            if not ((n > 2 and piece[n - 3] == 93) or (n > 4 and piece[n - 5] == 93)):
                return data
        self.held += data
        self.upstream.push_to(None)
        return b""


class StreamRelay:
    """Relays streams and keeps the ones in flight, so that shutdown can let them finish."""

    def __init__(
        self, registry: Registry, metrics: RouterMetrics, slow_client_timeout_s: float
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._slow_client_timeout_s = slow_client_timeout_s
        self._live: set[UpstreamResponse] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """Shutdown has begun: no stream goes on at another node any more."""
        return self._stopping

    async def drain(self, grace_s: float) -> int:
        """Let streams in flight finish for up to ``grace_s``, then cut the rest (their clients
        get an SSE error event). Returns how many were cut."""
        self._stopping = True
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
            return 0
        except TimeoutError:
            pass
        cut = list(self._live)
        for upstream in cut:
            upstream.close()
        return len(cut)

    async def start(
        self,
        request: web.Request,
        leg: Leg,
        headers: dict[str, str],
        record: RequestRecord,
        done_marker: bool,
        transcript: Transcript | None,
    ) -> web.StreamResponse | Cut:
        """Open the client's stream and relay the first leg; a :class:`Cut` (only with a
        ``transcript``: the stream may be resumed) leaves the response open."""
        record.stream = True
        response = HeldResponse(status=leg.upstream.status, headers=headers)
        await response.prepare(request)  # the headers go out with the first write
        return await self.relay(request, response, leg, record, done_marker, transcript)

    async def resume(
        self, request: web.Request, cut: Cut, leg: Leg, record: RequestRecord, done_marker: bool
    ) -> web.StreamResponse | Cut:
        """Relay a continuation into a cut stream (what the cut left pending goes first)."""
        if cut.pending:
            await cut.response.write(cut.pending)
        return await self.relay(request, cut.response, leg, record, done_marker, cut.transcript)

    async def relay(
        self,
        request: web.Request,
        response: web.StreamResponse,
        leg: Leg,
        record: RequestRecord,
        done_marker: bool,
        transcript: Transcript | None,
    ) -> web.StreamResponse | Cut:
        """Relay one leg into ``response``: ended there, or a :class:`Cut` left open."""
        pieces = _Pieces(record, leg, done_marker, transcript)
        upstream = leg.upstream
        first = leg.held
        if not leg.seen:
            first = pieces.account(first)
        elif transcript is not None:
            transcript.add(first)
            first = first if leg.rename is None else apply_renaming(first, leg.rename)
        self._live.add(upstream)
        self._idle.clear()
        try:
            if record.answer.error is None:
                await response.write(first)
                upstream.push_to(piece_writer(request, response, pieces.direct))
            else:  # it may tell of a cut: it waits for the end
                pieces.held = first
            last, error = await self._pump(request, upstream, response, pieces)
        finally:
            upstream.push_to(None)
            self._live.discard(upstream)
            if not self._live:
                self._idle.set()
        leg.node.served += 1
        if error is None:
            record.answer.end(perf_counter())
            before = _before_cut_event(last) if record.answer.error is not None else None
            if before is not None:  # the node's agent says its backend broke off
                last, error = before, ConnectionError(record.answer.error)
                record.answer.error = None  # a cut, not an error of the answer's own
        if error is None:
            fault = improper_end(record.answer)
            if fault is None:
                await response.write_eof(last)  # the last piece and the end of the body at once
                return response
        else:
            fault = self._broke_off(leg.node, record, error)
        return await self._cut(response, leg.node, record, last, fault, transcript)

    def _broke_off(self, node: Node, record: RequestRecord, exc: BaseException) -> str:
        """What a stream the node broke off (or shutdown ended) after its first token is."""
        if self._stopping:
            record.error = "router_shutdown"
            return "was ended: the router is shutting down"
        log.warning("stream from %s cut after its first token: %r", node.name, exc)
        self._registry.connection_failed(node, time.monotonic())
        return "was cut before it finished"

    async def _cut(
        self,
        response: web.StreamResponse,
        node: Node,
        record: RequestRecord,
        last: bytes,
        fault: str,
        transcript: Transcript | None,
    ) -> web.StreamResponse | Cut:
        pending = _without_done(last)
        tail = pending or record.tail
        sse = response.headers["Content-Type"].startswith("text/event-stream")
        whole = tail.endswith(b"\n\n" if sse else b"\n")
        if sse and not whole and tail.endswith(b"\n"):
            pending, whole = pending + b"\n", True
        cut = Cut(response, node, fault, pending, whole, transcript or Transcript())
        if transcript is None or not whole or self._stopping or transcript.full:
            await self.end_cut(cut, record)
            return response
        return cut

    async def end_cut(self, cut: Cut, record: RequestRecord) -> None:
        """End a cut stream for good: the client gets the error notice and the body's end."""
        response = cut.response
        if record.error != "router_shutdown":
            record.error = "stream_interrupted"
            self._metrics.cut_streams.labels(cut.node.group, cut.node.name).inc()
        ctype = response.headers["Content-Type"]
        message = f"the stream from node {cut.node.name} {cut.fault}"
        if cut.fault.startswith("was ended"):
            message = f"the stream {cut.fault}"
        start = b"" if cut.whole else b"\n\n"
        notice = _cut_notice(record.answer.surface, ctype, message)
        await response.write_eof(cut.pending + start + notice)

    async def _pump(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        pieces: _Pieces,
    ) -> tuple[bytes, BaseException | None]:
        """Relay what the socket writer left to this loop. Returns the node's last piece (and
        what was held back), not written, so that it goes out with the end of the body; and
        the error that cut the stream, if one did."""
        while True:
            try:
                piece = await upstream.readany()
            except (OSError, TimeoutError) as exc:
                return pieces.held, exc
            if not piece:
                return pieces.held, None
            data = pieces.held + pieces.account(piece)
            pieces.held = b""
            if upstream.finished:
                return data, None
            if pieces.answer.error is not None or (pieces.check_done and _ends_with_done(piece)):
                pieces.held = data  # what follows must not overtake it: it waits for the end
                upstream.push_to(None)
                continue
            if has_backlog(request):
                await self._write_to_slow_client(response, data, pieces.record)
            else:
                await response.write(data)  # a client that left raises and ends the handler

    async def _write_to_slow_client(
        self, response: web.StreamResponse, piece: bytes, record: RequestRecord
    ) -> None:
        """The client has not taken what was sent so far: aiohttp's buffer is bounded (a write
        waits for it to drain), so bound the wait too; a client that stopped reading is dropped
        (and the upstream generation cancelled) rather than held forever."""
        try:
            async with asyncio.timeout(self._slow_client_timeout_s):
                await response.write(piece)
        except TimeoutError:
            record.error = "slow_client"
            log.warning("dropping a client that stopped reading (%s)", record.correlation_id)
            raise ConnectionResetError("client stopped reading") from None
