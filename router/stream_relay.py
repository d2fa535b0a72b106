"""Relaying a node's stream to the client, piece by piece, and ending it properly.

Pieces go to the client's socket as the node's connection parses them
(:func:`router.client_socket.piece_writer`); a piece the client is not ready for goes through
the relay loop, which waits for the client (bounded: a client that stopped reading is dropped
and the node's generation cancelled). The node's last piece goes out with the end of the body.

A stream the client can take for a whole answer must be one: a stream cut after the first byte,
one that ends without its end (an OpenAI stream without ``[DONE]``), one with nothing in it, and
an OpenAI stream that shows neither content nor a finish reason all end with an SSE error event
and ``[DONE]`` (an NDJSON error line for NDJSON), counted as cut streams. The error event goes
before the node's own ``[DONE]``, which clients stop reading at: a piece that would end a stream
with no answer in it so far is held back until the stream's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter

import orjson
from aiohttp import web

from node_protocol.upstream import UpstreamResponse
from router.aliases import apply_renaming
from router.client_socket import has_backlog, piece_writer
from router.errors import envelope
from router.metrics import RouterMetrics
from router.records import RequestRecord
from router.registry import Node, Registry

log = logging.getLogger("router.proxy")

Renaming = tuple[tuple[bytes, bytes], ...]
_DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")
# A finish reason that is not null, with or without a space after the colon.
_FINISH_REASONS = (b'"finish_reason":"', b'"finish_reason": "')


def stream_error_event(message: str) -> bytes:
    event = envelope(message, "upstream_error", None, "stream_interrupted")
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


def _cut_notice(content_type: str, message: str) -> bytes:
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


def improper_end(done_marker: bool, tail: bytes, shown_answer: bool) -> str | None:
    """Why a stream that ended without an error is not properly ended, or None when it is.
    ``tail``: its last bytes; ``shown_answer``: it carried content or a finish reason."""
    if not tail:
        return "ended without sending anything"
    if done_marker and not _ends_with_done(tail):
        return "ended without [DONE]"
    if done_marker and not shown_answer:
        return "ended with no content and no finish reason"
    return None


class _Pieces:
    """One stream's pieces on their way to the client: accounted in the record, renamed, and,
    for an OpenAI stream, watched for an answer (content or a finish reason) until one shows."""

    __slots__ = ("answered", "done_marker", "record", "rename")

    def __init__(self, record: RequestRecord, rename: Renaming | None, done_marker: bool) -> None:
        self.record = record
        self.rename = rename
        self.done_marker = done_marker
        self.answered = not done_marker  # only an OpenAI stream is checked for an answer

    def account(self, piece: bytes) -> bytes:
        record = self.record
        record.watch(piece, perf_counter())
        if not self.answered:
            self.answered = record.tokens > 0 or any(f in piece for f in _FINISH_REASONS)
        return piece if self.rename is None else apply_renaming(piece, self.rename)

    def holds(self, piece: bytes) -> bool:
        """Whether ``piece`` waits for the stream's end: it ends an OpenAI stream that has shown
        no answer so far (an error event, if due, goes before the node's ``[DONE]``)."""
        return not self.answered and _ends_with_done(piece)

    def direct(self, piece: bytes) -> bytes | None:
        """For the socket writer: the bytes to send now, or None to leave ``piece`` to the
        relay loop."""
        if not self.answered and _ends_with_done(piece):
            return None
        return self.account(piece)


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

    async def relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        node: Node,
        headers: dict[str, str],
        record: RequestRecord,
        rename: Renaming | None,
        done_marker: bool,
    ) -> web.StreamResponse:
        record.stream = True
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        pieces = _Pieces(record, rename, done_marker)
        self._live.add(upstream)
        self._idle.clear()
        upstream.push_to(piece_writer(request, response, pieces.direct))
        try:
            last = await self._pump(request, upstream, response, node, pieces)
            if not record.error:
                last = self._ending(node, record, pieces, last, headers["Content-Type"])
        finally:
            upstream.push_to(None)
            self._live.discard(upstream)
            if not self._live:
                self._idle.set()
        node.served += 1
        await response.write_eof(last)  # the last piece and the end of the body in one write
        return response

    def _ending(
        self, node: Node, record: RequestRecord, pieces: _Pieces, last: bytes, content_type: str
    ) -> bytes:
        """The stream's last bytes: the node's, or, for a stream not properly ended, an error
        notice in their place (before the node's ``[DONE]``, if it sent one)."""
        fault = improper_end(pieces.done_marker, record.tail, pieces.answered)
        if fault is None:
            return last
        self._count_cut(node, record)
        notice = _cut_notice(content_type, f"the stream from node {node.name} {fault}")
        return _without_done(last) + notice

    def _count_cut(self, node: Node, record: RequestRecord) -> None:
        record.error = "stream_interrupted"
        self._metrics.cut_streams.labels(node.group, node.name).inc()

    async def _pump(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        node: Node,
        pieces: _Pieces,
    ) -> bytes:
        """Relay what the socket writer left to this loop; the node's last piece (and any held
        back) is returned, not written, so that it goes out with the end of the body."""
        held = b""
        while True:
            try:
                piece = await upstream.readany()
            except (OSError, TimeoutError) as exc:
                await response.write(self._cut(node, pieces.record, exc, response))
                return b""
            if not piece:
                return held
            hold = pieces.holds(piece)
            piece = held + pieces.account(piece)
            if upstream.finished:
                return piece
            if hold:
                held = piece
                upstream.push_to(None)  # what follows must not overtake the held piece
                continue
            held = b""
            if has_backlog(request):
                await self._write_to_slow_client(response, piece, pieces.record)
            else:
                await response.write(piece)  # a client that left raises and ends the handler

    def _cut(
        self, node: Node, record: RequestRecord, exc: BaseException, response: web.StreamResponse
    ) -> bytes:
        """The notice for a stream the node broke off (or shutdown ended) after the first byte."""
        if self._stopping:
            record.error = "router_shutdown"
            message = "the router is shutting down: the stream was ended"
        else:
            log.warning("stream from %s cut after first byte: %r", node.name, exc)
            self._registry.connection_failed(node, time.monotonic())
            self._count_cut(node, record)
            message = f"the stream from node {node.name} was cut before it finished"
        return _cut_notice(response.headers["Content-Type"], message)

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
