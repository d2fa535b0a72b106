"""Forwarding one request to the nodes the scheduler chose.

The body goes upstream as it was read (no re-encoding). Each attempt at a node ends in a typed
outcome, and :func:`router.failover.decide` says what it means: before the first byte a node
fault (no connection, a timeout, a reset, a gateway error, garbage) opens the node's breaker and
moves on to the next candidate, an overloaded node (429, 503) is noted busy and passed over, and
an error that is the request's own (its body says so, or two nodes gave the same 500) is
answered to the client at once (bounded by ``max_attempts`` in all). After the first byte the
stream relay (:mod:`router.stream_relay`) owns the answer. A client that leaves cancels the
handler (``handler_cancellation``), which closes the upstream connection so the backend stops
generating. The node's slot is reserved before the upstream call and released exactly once when
the attempt ends, whatever way it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import orjson
from aiohttp import web

from node_protocol.upstream import CallLimits, UpstreamBroken, UpstreamPool, UpstreamResponse
from node_protocol.wire import NODE_BUSY_HEADER, SLOT_CHECK_HEADER
from router.aliases import apply_renaming
from router.errors import UpstreamError, envelope
from router.failover import (
    ANSWERED,
    AT_END,
    Broken,
    ErrorAnswer,
    Failure,
    Garbage,
    Mark,
    Next,
    Settle,
    TimedOut,
    Unreachable,
    decide,
    error_outcome,
    final_error,
)
from router.metrics import RouterMetrics
from router.outbound import Outbound, response_headers
from router.records import RequestRecord
from router.registry import Group, Node, Registry, Reservation
from router.scheduling import DEFAULT_SLOTS
from router.settings import RouterSettings
from router.stream_relay import StreamRelay, stream_error_event

__all__ = ["FORWARDER", "Forwarder", "NodeBusy", "Outbound", "stream_error_event"]

log = logging.getLogger("router.proxy")

STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
MAX_ERROR_BODY = 64 * 1024


class NodeBusy(Exception):
    """The node's agent answered a slot check busy: every slot was taken (by another router
    replica) since its last report. Nothing was sent to the backend; the request can be picked
    again. ``in_flight`` is the agent's count."""

    def __init__(self, node: Node, in_flight: int) -> None:
        super().__init__(f"{node.name} is busy ({in_flight} in flight)")
        self.in_flight = in_flight


class _Slot:
    """One attempt's reservation, released exactly once: early (before the node's load is
    noted) or when the attempt ends, whichever comes first."""

    __slots__ = ("_on_release", "_reservation")

    def __init__(self, reservation: Reservation, on_release: Callable[[], None] | None) -> None:
        self._reservation: Reservation | None = reservation
        self._on_release = on_release

    def free(self) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            reservation.release()
            if self._on_release is not None:
                self._on_release()

    def __enter__(self) -> _Slot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.free()


def _has_envelope(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _full_load(node: Node, model: str) -> int:
    """A count of requests at a node that said it is full: its slots for ``model`` (or the
    scheduler's default), and at least one more than this router has there."""
    slots = next(
        (m.max_parallel for m in node.models() if m.id == model or model in m.aliases), None
    )
    return max(slots or DEFAULT_SLOTS, node.in_flight + 1)


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
        self._streams = StreamRelay(registry, metrics, settings.slow_client_timeout_s)

    async def drain(self, grace_s: float) -> int:
        """Let streams in flight finish for up to ``grace_s``, then cut the rest (their clients
        get an SSE error event). Returns how many were cut."""
        return await self._streams.drain(grace_s)

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
        failures: list[Failure] = []
        unclear: list[tuple[Node, ErrorAnswer]] = []  # 500s another node's outcome decides
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
                with _Slot(reservation, on_release) as slot:
                    answer = await self._attempt(
                        request, group, node, out, record, slot, check, unclear
                    )
                    if isinstance(answer, web.StreamResponse):
                        return answer
                    if self._judge(group, node, out, answer, slot, unclear) is Next.ANSWER:
                        assert isinstance(answer, ErrorAnswer)
                        return self._answer_error(node, out, record, answer)
                    failures.append(answer)
        finally:
            if first is not None:  # its node was gone before it was tried
                _Slot(first, on_release).free()
        self._settle(unclear, AT_END)
        record.node = None
        raise final_error(out.model, failures, self._settings.retry_after_s)

    async def _attempt(
        self,
        request: web.Request,
        group: Group,
        node: Node,
        out: Outbound,
        record: RequestRecord,
        slot: _Slot,
        check: int,
        unclear: list[tuple[Node, ErrorAnswer]],
    ) -> web.StreamResponse | Failure:
        """One node: its answer relayed to the client, or why it could not be."""
        record.t_upstream_sent = time.perf_counter()
        try:
            opened = await self._open(node, out, check)
        except NodeBusy as busy:
            record.attempts -= 1  # not a failure: the request was never sent on
            slot.free()
            self._registry.note_busy(node, busy.in_flight, time.monotonic())
            self._metrics.busy_answers.labels(group.name, node.name).inc()
            raise
        if not isinstance(opened, UpstreamResponse):
            return opened
        record.t_upstream_headers = time.perf_counter()
        self._registry.connection_ok(node)
        if unclear:  # an answer here tells what the earlier 500s were
            self._settle(unclear, decide(ANSWERED).earlier)
        try:
            return await self._relay(request, opened, node, out, record)
        finally:
            opened.close()

    def _judge(
        self,
        group: Group,
        node: Node,
        out: Outbound,
        failure: Failure,
        slot: _Slot,
        unclear: list[tuple[Node, ErrorAnswer]],
    ) -> Next:
        """Apply the policy's decision on a failed attempt to the node (and to earlier ones)."""
        decision = decide(failure, [answer for _, answer in unclear])
        slot.free()  # before the node's load is noted
        if decision.next is Next.RETRY:
            log.warning("node %s failed before first byte: %s", node.name, failure.reason)
            self._metrics.retries.labels(group.name, node.name).inc()
        now = time.monotonic()
        if decision.node is Mark.BREAKER:
            self._registry.connection_failed(node, now)
        elif decision.node is Mark.BUSY:
            model = out.node_models.get(node.node_id, out.model)
            self._registry.note_busy(node, _full_load(node, model), now)
        elif decision.node is Mark.UNCLEAR:
            assert isinstance(failure, ErrorAnswer)
            unclear.append((node, failure))
        else:
            self._registry.connection_ok(node)  # it answered, and sensibly
        self._settle(unclear, decision.earlier)
        return decision.next

    def _settle(self, unclear: list[tuple[Node, ErrorAnswer]], settle: Settle) -> None:
        """Decide the earlier unclear 500s as the policy says: their nodes' fault (breakers
        open) or the request's (nothing against the nodes)."""
        if settle is Settle.KEEP or not unclear:
            return
        if settle is Settle.NODE:
            now = time.monotonic()
            for node, _ in unclear:
                self._registry.connection_failed(node, now)
        unclear.clear()

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

    async def _open(self, node: Node, out: Outbound, slot_check: int) -> UpstreamResponse | Failure:
        """Send the request; the node's answer once its headers are in and it is fit to relay,
        or the failure it is."""
        path, body, _ = out.for_node(node)
        limits, idle_s = self._limits_for(node.group)
        headers = out.headers_for(node)
        if slot_check:
            headers[SLOT_CHECK_HEADER] = str(slot_check)
        try:
            resp = await self._pool.post(node.base_url, path, body, headers, limits)
        except TimeoutError:  # no connection, or no headers, in time
            return TimedOut(f"timeout waiting for {node.name}")
        except (UpstreamBroken, ConnectionResetError) as exc:
            return Broken(f"{node.name}: {exc.__class__.__name__}")
        except (OSError, ValueError) as exc:  # refused, unreachable, not a usable URL
            return Unreachable(f"{node.name}: {exc.__class__.__name__}")
        resp.pace(idle_s)
        status = resp.status
        if status < 300:
            return resp if out.stream is None else await self._check_answer(node, out, resp)
        if status < 500 and status != 429:
            return resp  # the client's error, for the client to read
        if status == 503 and slot_check:
            busy = resp.headers.get(NODE_BUSY_HEADER.lower(), "")
            if busy.isdigit():
                resp.close()
                raise NodeBusy(node, int(busy))
        try:
            detail = await resp.read_some(MAX_ERROR_BODY)
        except (OSError, TimeoutError):
            detail = b""
        resp.close()
        return error_outcome(status, resp.headers, detail, node.name)

    @staticmethod
    async def _check_answer(
        node: Node, out: Outbound, resp: UpstreamResponse
    ) -> UpstreamResponse | Garbage:
        """Refuse garbage while nothing has reached the client, so it can go elsewhere: a
        stream answered with something that is not a stream, or a whole answer that is not
        (complete) JSON."""
        ctype = resp.headers.get("content-type", "")
        if out.stream:
            if ctype.startswith(STREAM_TYPES):
                return resp
            resp.close()
            return Garbage(f"{node.name} answered a stream as {ctype!r}")
        try:
            body = await resp.read()  # kept: the relay reads it again for free
        except (OSError, TimeoutError) as exc:
            resp.close()
            return Garbage(f"{node.name} broke off its answer: {exc!r}")
        text = body.strip()
        if "json" not in ctype or not text or text[:1] not in b"{[" or text[-1:] not in b"}]":
            resp.close()
            return Garbage(f"{node.name} answered something that is not JSON")
        return resp

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        node: Node,
        out: Outbound,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.status = upstream.status
        rename = out.renaming_for(node)
        ctype = upstream.headers.get("content-type", "application/json")
        if upstream.status < 400 and ctype.startswith(STREAM_TYPES):
            headers = response_headers(ctype, node, out, record)
            return await self._streams.relay(
                request, upstream, node, headers, record, rename, out.done_marker
            )
        try:
            body = await upstream.read()
        except (OSError, TimeoutError) as exc:
            self._registry.connection_failed(node, time.monotonic())
            raise UpstreamError(f"{node.name} broke off its answer: {exc!r}") from exc
        record.take_body(body, time.perf_counter())
        if rename is not None:
            body = apply_renaming(body, rename)
        headers = response_headers(ctype, node, out, record)
        if upstream.status >= 400 and not _has_envelope(body):
            text = body.decode("utf-8", "replace")[:500]
            body = orjson.dumps(envelope(text or upstream.reason or "error", "upstream_error"))
            headers["Content-Type"] = "application/json"
        node.served += 1
        return web.Response(status=upstream.status, body=body, headers=headers)

    def _answer_error(
        self, node: Node, out: Outbound, record: RequestRecord, answer: ErrorAnswer
    ) -> web.Response:
        """The client's answer to a request that is at fault: the node's error, in the OpenAI
        envelope (the node's own when it sent one)."""
        record.status = status = answer.client_status
        body = answer.body
        if not _has_envelope(body):
            kind = "invalid_request_error" if status < 500 else "upstream_error"
            body = orjson.dumps(envelope(answer.message or f"error {answer.status}", kind))
        rename = out.renaming_for(node)
        if rename is not None:
            body = apply_renaming(body, rename)
        node.served += 1
        headers = response_headers("application/json", node, out, record)
        return web.Response(status=status, body=body, headers=headers)


FORWARDER = web.AppKey("forwarder", Forwarder)
