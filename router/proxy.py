"""Forwarding one request to the nodes the scheduler chose.

The body goes upstream as it was read (no re-encoding). Each attempt at a node ends in a typed
outcome, and :func:`router.failover.decide` says what it means: until the answer's first token
(a whole answer: until its end) nothing has reached the client, so a node fault (no connection,
a timeout, a reset, a gateway error, garbage, a stream that ends or stalls before its first
token) opens the node's breaker and moves on to the next candidate, an overloaded node (429,
503) is noted busy and passed over, and an error that is the request's own (its body says so,
or two nodes gave the same 500) is answered to the client at once (bounded by ``max_attempts``
in all). From the first token the stream relay (:mod:`router.stream_relay`) owns the answer; a
stream cut after it is resumed on another node serving the model where the group allows it and
a node can continue it (:mod:`router.resume`), else it ends with an SSE error event. A client
that leaves cancels the handler (``handler_cancellation``), which closes the upstream connection
so the backend stops generating. A node's slot is reserved before each call and released
exactly once when that call ends, whatever way it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import orjson
from aiohttp import web

from node_protocol.events import AnswerReader
from node_protocol.upstream import UpstreamPool, UpstreamResponse
from router.aliases import apply_renaming
from router.client_socket import WholeAnswer
from router.continuation import CONTINUING_KINDS, Transcript
from router.errors import UpstreamError, envelope
from router.failover import (
    ANSWERED,
    AT_END,
    ErrorAnswer,
    Failure,
    Mark,
    Next,
    Settle,
    decide,
    final_error,
)
from router.first_token import first_token
from router.metrics import RouterMetrics
from router.node_calls import STREAM_TYPES, NodeBusy, NodeCalls
from router.outbound import Outbound, response_headers
from router.records import RequestRecord
from router.registry import Group, Node, Registry, Reservation
from router.resume import Resumer
from router.settings import RouterSettings
from router.stream_relay import Cut, Leg, StreamRelay, stream_error_event

__all__ = ["FORWARDER", "Forwarder", "NodeBusy", "Outbound", "stream_error_event"]

Answer = web.StreamResponse | Cut


def _has_envelope(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _streamed(resp: UpstreamResponse) -> bool:
    return resp.status < 400 and resp.headers.get("content-type", "").startswith(STREAM_TYPES)


class Forwarder:
    """Sends requests to nodes over pooled keep-alive connections."""

    def __init__(
        self,
        pool: UpstreamPool,
        registry: Registry,
        settings: RouterSettings,
        metrics: RouterMetrics,
    ) -> None:
        self._calls = NodeCalls(pool, registry, settings, metrics)
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._resume_in: dict[str, bool] = {}
        self._streams = StreamRelay(registry, metrics, settings.slow_client_timeout_s)
        self._resumer = Resumer(
            self._calls, registry, self._streams, metrics, settings.max_attempts
        )

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
        (admission reserves when it picks); the slots taken here on the others run
        ``on_release`` once freed. Each slot is released when its attempt ends, at the latest.
        ``slot_check``: the first node's slots, for its agent to check (see
        :func:`router.scheduling.slot_check`); a busy answer raises :class:`NodeBusy` after
        the slot is released and the node's load noted."""
        failures: list[Failure] = []
        unclear: list[tuple[Node, ErrorAnswer]] = []  # 500s another node's outcome decides
        tried: set[str] = set()
        cut: Cut | None = None
        try:
            for node_id in order:
                if record.attempts >= self._settings.max_attempts:
                    break
                node = group.nodes.get(node_id)
                if node is None:
                    continue
                record.attempts += 1
                record.node = node.name
                tried.add(node_id)
                check = 0
                if first is not None and first.node is node:
                    reservation, first, check = first, None, slot_check
                else:
                    reservation = Reservation(node, out.model, on_release)
                with reservation as slot:
                    answer = await self._attempt(
                        request, group, node, out, record, slot, check, unclear
                    )
                    if isinstance(answer, Cut):
                        cut = answer
                        break
                    if isinstance(answer, web.StreamResponse):
                        return answer
                    if self._judge(node, out, answer, slot, unclear) is Next.ANSWER:
                        assert isinstance(answer, ErrorAnswer)
                        return self._answer_error(node, out, record, answer)
                    failures.append(answer)
        finally:
            if first is not None:  # its node was gone before it was tried
                first.release()
        if cut is not None:  # the cut node's slot is free: go on elsewhere
            return await self._resumer.resume(
                request, group, order, out, record, cut, tried, on_release
            )
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
        slot: Reservation,
        check: int,
        unclear: list[tuple[Node, ErrorAnswer]],
    ) -> Answer | Failure:
        """One node: its answer relayed to the client, or why it could not be."""
        record.t_upstream_sent = time.perf_counter()
        try:
            opened = await self._calls.open(node, out, check)
        except NodeBusy as busy:
            record.attempts -= 1  # not a failure: the request was never sent on
            slot.release()
            self._registry.note_busy(node, busy.in_flight, time.monotonic())
            self._metrics.busy_answers.labels(group.name, node.name).inc()
            raise
        if not isinstance(opened, UpstreamResponse):
            return opened
        try:
            held = b""
            if _streamed(opened):
                answer = record.answer
                got = await first_token(opened, answer, record.watch, node.name)
                if not isinstance(got, bytes):
                    record.answer = AnswerReader(answer.surface)  # nothing of it was relayed
                    record.tail = b""
                    return got
                held = got
            record.t_upstream_headers = time.perf_counter()  # the answer's start is in hand
            self._registry.connection_ok(node)
            if unclear:  # an answer here tells what the earlier 500s were
                self._settle(unclear, decide(ANSWERED).earlier)
            return await self._relay(request, group, opened, node, out, record, held)
        finally:
            opened.close()

    def _judge(
        self,
        node: Node,
        out: Outbound,
        failure: Failure,
        slot: Reservation,
        unclear: list[tuple[Node, ErrorAnswer]],
    ) -> Next:
        """Apply the policy's decision on a failed attempt to the node (and to earlier ones)."""
        decision = decide(failure, [answer for _, answer in unclear])
        slot.release()  # before the node's load is noted
        self._calls.note(node, out, failure, decision.next, decision.node)
        if decision.node is Mark.UNCLEAR:
            assert isinstance(failure, ErrorAnswer)
            unclear.append((node, failure))
        elif decision.node is Mark.NONE:
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

    def _resumes(self, group: str) -> bool:
        on = self._resume_in.get(group)
        if on is None:
            on = self._resume_in[group] = self._settings.resume_for(group)
        return on

    async def _relay(
        self,
        request: web.Request,
        group: Group,
        upstream: UpstreamResponse,
        node: Node,
        out: Outbound,
        record: RequestRecord,
        held: bytes,
    ) -> Answer:
        record.status = upstream.status
        rename = out.renaming_for(node)
        ctype = upstream.headers.get("content-type", "application/json")
        if _streamed(upstream):
            headers = response_headers(ctype, node, out, record)
            leg = Leg(upstream, node, rename, held, seen=True)
            resumable = out.stream and record.answer.surface in CONTINUING_KINDS
            transcript = Transcript() if resumable and self._resumes(group.name) else None
            return await self._streams.start(
                request, leg, headers, record, out.done_marker, transcript
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
        return WholeAnswer(status=upstream.status, body=body, headers=headers)

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
