"""Forwarding one request to the nodes the scheduler chose.

The body goes upstream as it was read (no re-encoding). A connection error, a timeout before the
headers, or a 5xx answer **before the first byte** moves on to the next candidate (bounded by
``max_attempts``); after the first byte has been relayed, a broken upstream ends the client's
stream with an SSE error event and ``[DONE]``. Streams are relayed chunk by chunk as they arrive.
A client that leaves cancels the handler (``handler_cancellation``), which closes the upstream
connection so the backend stops generating. The node's slot is reserved before the upstream call
and released exactly once when the response ends, whatever way it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from aiohttp import web

from node_protocol.upstream import CallLimits, UpstreamPool, UpstreamResponse
from node_protocol.wire import NODE_BUSY_HEADER, SLOT_CHECK_HEADER
from router.aliases import apply_renaming, renaming, rewrite_model
from router.errors import NoCapacity, UpstreamError, UpstreamTimeout, envelope
from router.metrics import RouterMetrics
from router.records import RequestRecord
from router.registry import Group, Node, Registry, Reservation
from router.settings import RouterSettings

log = logging.getLogger("router.proxy")

STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
MAX_ERROR_BODY = 64 * 1024
NODE_FAILURE_STATUSES = frozenset({500, 502, 504})


@dataclass(frozen=True, slots=True)
class Outbound:
    """One client request as it will be sent upstream."""

    path: str
    body: bytes
    model: str
    correlation_id: str
    tenant_id: str | None
    session_id: str | None
    node_models: Mapping[str, str] = field(default_factory=dict)  # node id -> its model name
    model_in_body: bool = True
    stream: bool | None = None  # whether the client asked for a stream (None: not known)
    done_marker: bool = False  # an OpenAI stream, which must end with data: [DONE]

    def for_node(self, node: Node) -> tuple[str, bytes, str]:
        """Path, body and model name as this node knows the model (aliases applied)."""
        name = self.node_models.get(node.node_id, self.model)
        path = self.path
        if "{" in path:  # a native API's path names the model
            path = path.replace("{model}", quote(name, safe=""))
        if name == self.model or not self.model_in_body:
            return path, self.body, name
        return path, rewrite_model(self.body, name), name


class _Failed(Exception):
    """An attempt that failed before the first byte; the next candidate may be tried."""

    def __init__(self, reason: str, *, node_fault: bool, overloaded: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node_fault = node_fault
        self.overloaded = overloaded


class NodeBusy(Exception):
    """The node's agent answered a slot check busy: every slot was taken (by another router
    replica) since its last report. Nothing was sent to the backend; the request can be picked
    again. ``in_flight`` is the agent's count."""

    def __init__(self, node: Node, in_flight: int) -> None:
        super().__init__(f"{node.name} is busy ({in_flight} in flight)")
        self.in_flight = in_flight


def stream_error_event(message: str) -> bytes:
    event = envelope(message, "upstream_error", None, "stream_interrupted")
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


def _free(reservation: Reservation, on_release: Callable[[], None] | None) -> None:
    reservation.release()
    if on_release is not None:
        on_release()


def _ends_with_done(tail: bytes) -> bool:
    return tail.rstrip().endswith(b"data: [DONE]") or tail.rstrip().endswith(b"data:[DONE]")


def _cut_notice(content_type: str, message: str) -> bytes:
    if content_type.startswith("text/event-stream"):
        return stream_error_event(message)
    return orjson.dumps({"error": message}) + b"\n"


def _upstream_headers(node: Node, out: Outbound) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Octopus-Correlation-Id": out.correlation_id,
    }
    if out.tenant_id is not None:
        headers["X-Octopus-Tenant-Id"] = out.tenant_id
    if out.session_id is not None:
        headers["X-Octopus-Session-Id"] = out.session_id
    if node.static:  # no agent beside the backend: rename as the agent would
        headers["X-Tenant-Id"] = out.tenant_id or ""
        headers["X-Correlation-Id"] = out.correlation_id
    return headers


def _response_headers(
    upstream: Mapping[str, str], node: Node, out: Outbound, record: RequestRecord
) -> dict[str, str]:
    record.t_headers_out = time.perf_counter()
    overhead = record.overhead_s or 0.0
    headers = {
        "Content-Type": upstream.get("content-type", "application/json"),
        "X-Correlation-Id": out.correlation_id,
        "X-Inference-Node": node.name,
        "X-Router-Attempts": str(record.attempts),
        "X-Router-Overhead-Ms": f"{overhead * 1000:.3f}",
    }
    if headers["Content-Type"].startswith("text/event-stream"):
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    return headers


def _has_envelope(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _client_sink(
    request: web.Request,
    response: web.StreamResponse,
    record: RequestRecord,
    rename: tuple[tuple[bytes, bytes], ...] | None,
) -> Callable[[bytes], bool]:
    """Writes each piece of a stream to the client as the node's connection parses it, with
    no task switch and no layer between (the relay's cost was per piece, not per request):
    aiohttp has sent the headers, so pieces go to the socket framed as aiohttp would frame
    them. A client that has not taken what was sent before gets nothing here: the piece is
    refused and goes through the relay loop, which waits for the client (bounded)."""
    transport = request.transport
    chunked = response.headers.get("Transfer-Encoding") == "chunked"
    clock = time.perf_counter

    def push(chunk: bytes) -> bool:
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        record.watch(chunk, clock())
        if rename is not None:
            chunk = apply_renaming(chunk, rename)
        if not chunk:  # an empty chunk would end a chunked body
            return True
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        return True

    return push


class Forwarder:
    """Sends requests to nodes over pooled keep-alive connections."""

    def __init__(
        self,
        pool: UpstreamPool,
        registry: Registry,
        settings: RouterSettings,
        metrics: RouterMetrics,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._timeouts: dict[str, tuple[CallLimits, float]] = {}
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

    async def forward(
        self,
        request: web.Request,
        group: Group,
        order: Sequence[str],
        out: Outbound,
        record: RequestRecord,
        *,
        first: Reservation | None = None,
        on_release: Callable[[], None] | None = None,
        slot_check: int = 0,
    ) -> web.StreamResponse:
        """Try the nodes in ``order``; ``first`` is a slot already reserved on the first one
        (admission reserves when it picks); ``on_release`` runs after each slot is freed.
        ``slot_check``: the first node's slots, for its agent to check (see
        :func:`router.scheduling.slot_check`); a busy answer raises :class:`NodeBusy` after
        the slot is released and the node's load noted."""
        failures: list[_Failed] = []
        try:
            for node_id in order:
                if record.attempts >= self._settings.max_attempts:
                    break
                node = group.nodes.get(node_id)
                if node is None:
                    continue
                record.attempts += 1
                record.node = node.name
                check = 0
                if first is not None and first.node is node:
                    reservation, first, check = first, None, slot_check
                else:
                    reservation = Reservation(node, out.model)
                record.t_upstream_sent = time.perf_counter()
                try:
                    upstream = await self._open(node, out, check)
                except NodeBusy as busy:
                    record.attempts -= 1  # not a failure: the request was never sent on
                    _free(reservation, on_release)
                    self._registry.note_busy(node, busy.in_flight, time.monotonic())
                    self._metrics.busy_answers.labels(group.name, node.name).inc()
                    raise
                except _Failed as failed:
                    _free(reservation, on_release)
                    self._note_failure(group, node, failed)
                    failures.append(failed)
                    continue
                record.t_upstream_headers = time.perf_counter()
                self._registry.connection_ok(node)
                try:
                    return await self._relay(request, upstream, node, out, record)
                finally:
                    upstream.close()
                    _free(reservation, on_release)
        finally:
            if first is not None:  # its node was gone before it was tried
                _free(first, on_release)
        record.node = None
        raise self._final_error(out.model, failures)

    def _note_failure(self, group: Group, node: Node, failed: _Failed) -> None:
        log.warning("node %s failed before first byte: %s", node.name, failed.reason)
        self._metrics.retries.labels(group.name, node.name).inc()
        if failed.node_fault:
            self._registry.connection_failed(node, time.monotonic())

    def _final_error(self, model: str, failures: list[_Failed]) -> Exception:
        retry = self._settings.retry_after_s
        if not failures:
            return NoCapacity(f"no node can take a request for '{model}' now", retry_after_s=retry)
        reasons = "; ".join(f.reason for f in failures)
        if all(f.overloaded for f in failures):
            return NoCapacity(f"every node for '{model}' is busy: {reasons}", retry_after_s=retry)
        if all(f.reason.startswith("timeout") for f in failures):
            return UpstreamTimeout(f"no node answered in time for '{model}': {reasons}")
        return UpstreamError(f"no node could serve '{model}': {reasons}")

    def _limits_for(self, group: str) -> tuple[CallLimits, float]:
        """(call limits, idle bound for the body) for a group, built once. The headers are
        awaited within the first-byte bound, or the idle bound where that is shorter."""
        cached = self._timeouts.get(group)
        if cached is None:
            t = self._settings.timeouts_for(group)
            headers_s = min(t.first_byte_s, t.idle_s)
            limits = CallLimits(connect_s=t.connect_s, idle_s=headers_s, total_s=t.total_s)
            cached = self._timeouts[group] = (limits, t.idle_s)
        return cached

    async def _open(self, node: Node, out: Outbound, slot_check: int = 0) -> UpstreamResponse:
        path, body, _ = out.for_node(node)
        limits, idle_s = self._limits_for(node.group)
        headers = _upstream_headers(node, out)
        if slot_check:
            headers[SLOT_CHECK_HEADER] = str(slot_check)
        try:
            resp = await self._pool.post(node.base_url, path, body, headers, limits)
        except TimeoutError as exc:
            raise _Failed(f"timeout waiting for {node.name}", node_fault=True) from exc
        except (OSError, ValueError) as exc:  # ConnectionError and UpstreamBroken are OSErrors
            raise _Failed(f"{node.name}: {exc.__class__.__name__}", node_fault=True) from exc
        resp.pace(idle_s)
        if resp.status == 503 and slot_check:
            busy = resp.headers.get(NODE_BUSY_HEADER.lower(), "")
            if busy.isdigit():
                resp.close()
                raise NodeBusy(node, int(busy))
        if resp.status >= 500:
            try:
                detail = (await resp.read_some(MAX_ERROR_BODY)).decode("utf-8", "replace")
            except (OSError, TimeoutError):
                detail = ""
            resp.close()
            raise _Failed(
                f"{node.name} answered {resp.status} {detail[:200]}".rstrip(),
                node_fault=resp.status in NODE_FAILURE_STATUSES,
                overloaded=resp.status in (429, 503),
            )
        if resp.status < 300 and out.stream is not None:
            await self._check_answer(node, out, resp)
        return resp

    @staticmethod
    async def _check_answer(node: Node, out: Outbound, resp: UpstreamResponse) -> None:
        """Refuse garbage while nothing has reached the client, so it can go elsewhere: a
        stream answered with something that is not a stream, or a whole answer that is not
        (complete) JSON."""
        ctype = resp.headers.get("content-type", "")
        if out.stream:
            if not ctype.startswith(STREAM_TYPES):
                resp.close()
                raise _Failed(f"{node.name} answered a stream as {ctype!r}", node_fault=True)
            return
        try:
            body = await resp.read()  # kept: the relay reads it again for free
        except (OSError, TimeoutError) as exc:
            resp.close()
            raise _Failed(f"{node.name} broke off its answer: {exc!r}", node_fault=True) from exc
        text = body.strip()
        if "json" not in ctype or not text or text[:1] not in b"{[" or text[-1:] not in b"}]":
            resp.close()
            raise _Failed(f"{node.name} answered something that is not JSON", node_fault=True)

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        node: Node,
        out: Outbound,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.status = upstream.status
        node_name = out.node_models.get(node.node_id)
        rename = None if node_name is None else renaming(node_name, out.model)
        ctype = upstream.headers.get("content-type", "")
        if upstream.status < 400 and ctype.startswith(STREAM_TYPES):
            headers = _response_headers(upstream.headers, node, out, record)
            return await self._relay_stream(request, upstream, node, out, headers, record, rename)
        try:
            body = await upstream.read()
        except (OSError, TimeoutError) as exc:
            self._registry.connection_failed(node, time.monotonic())
            raise UpstreamError(f"{node.name} broke off its answer: {exc!r}") from exc
        record.take_body(body, time.perf_counter())
        if rename is not None:
            body = apply_renaming(body, rename)
        headers = _response_headers(upstream.headers, node, out, record)
        if upstream.status >= 400 and not _has_envelope(body):
            text = body.decode("utf-8", "replace")[:500]
            body = orjson.dumps(envelope(text or upstream.reason or "error", "upstream_error"))
            headers["Content-Type"] = "application/json"
        node.served += 1
        return web.Response(status=upstream.status, body=body, headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        node: Node,
        out: Outbound,
        headers: dict[str, str],
        record: RequestRecord,
        rename: tuple[tuple[bytes, bytes], ...] | None,
    ) -> web.StreamResponse:
        record.stream = True
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        self._live.add(upstream)
        self._idle.clear()
        upstream.push_to(_client_sink(request, response, record, rename))
        try:
            last = await self._pump(request, upstream, response, node, headers, record, rename)
            if out.done_marker and not record.error and not _ends_with_done(record.tail):
                record.error = "stream_interrupted"
                message = f"the stream from node {node.name} ended without [DONE]"
                last += _cut_notice(headers["Content-Type"], message)
        finally:
            upstream.push_to(None)
            self._live.discard(upstream)
            if not self._live:
                self._idle.set()
        node.served += 1
        await response.write_eof(last)  # the last piece and the end of the body in one write
        return response

    async def _pump(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        node: Node,
        headers: dict[str, str],
        record: RequestRecord,
        rename: tuple[tuple[bytes, bytes], ...] | None,
    ) -> bytes:
        """Relay the stream as it arrives; the node's last piece is returned, not written, so
        that it goes out with the end of the body."""
        clock = time.perf_counter
        while True:
            try:
                chunk = await upstream.readany()
            except (OSError, TimeoutError) as exc:
                if self._stopping:
                    message = "the router is shutting down: the stream was ended"
                    record.error = "router_shutdown"
                else:
                    log.warning("stream from %s cut after first byte: %r", node.name, exc)
                    self._registry.connection_failed(node, time.monotonic())
                    self._metrics.cut_streams.labels(node.group, node.name).inc()
                    message = f"the stream from node {node.name} was cut before it finished"
                    record.error = "stream_interrupted"
                await response.write(_cut_notice(headers["Content-Type"], message))
                return b""
            if not chunk:
                return b""
            record.watch(chunk, clock())
            if rename is not None:
                chunk = apply_renaming(chunk, rename)
            if upstream.finished:
                return chunk
            transport = request.transport
            if transport is not None and transport.get_write_buffer_size():
                await self._write_to_slow_client(response, chunk, record)
            else:
                await response.write(chunk)  # a client that left raises and ends the handler

    async def _write_to_slow_client(
        self, response: web.StreamResponse, chunk: bytes, record: RequestRecord
    ) -> None:
        """The client has not taken what was sent so far: aiohttp's buffer is bounded (a write
        waits for it to drain), so bound the wait too; a client that stopped reading is dropped
        (and the upstream generation cancelled) rather than held forever."""
        try:
            async with asyncio.timeout(self._settings.slow_client_timeout_s):
                await response.write(chunk)
        except TimeoutError:
            record.error = "slow_client"
            log.warning("dropping a client that stopped reading (%s)", record.correlation_id)
            raise ConnectionResetError("client stopped reading") from None


FORWARDER = web.AppKey("forwarder", Forwarder)
