"""Opening one call to a node: the request out, the answer's headers in, and the answer checked
while nothing of it has reached the client.

What comes back is an answer fit to relay (a success, or a client error the client is to read)
or the typed failure it is (:mod:`router.failover`). A whole answer is read to its end here, so
one broken off or not JSON can still go to another node; a stream's first token is awaited by
the relay (:func:`router.stream_relay.first_token`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

from node_protocol.upstream import CallLimits, UpstreamBroken, UpstreamPool, UpstreamResponse
from node_protocol.wire import NODE_BUSY_HEADER, SLOT_CHECK_HEADER
from router.failover import (
    Broken,
    Failure,
    Garbage,
    Mark,
    Next,
    TimedOut,
    Unreachable,
    error_outcome,
    retry_label,
)
from router.metrics import RouterMetrics
from router.outbound import Outbound
from router.registry import Node, Registry, Reservation
from router.scheduling import DEFAULT_SLOTS
from router.settings import RouterSettings

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


class Slot:
    """One call's reservation, released exactly once: early (before the node's load is
    noted) or when the call ends, whichever comes first."""

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

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.free()


def _full_load(node: Node, model: str) -> int:
    """A count of requests at a node that said it is full: its slots for ``model`` (or the
    scheduler's default), and at least one more than this router has there."""
    slots = next(
        (m.max_parallel for m in node.models() if m.id == model or model in m.aliases), None
    )
    return max(slots or DEFAULT_SLOTS, node.in_flight + 1)


class NodeCalls:
    """Opens calls to nodes over pooled keep-alive connections, within each group's bounds, and
    notes what a failed one says about its node."""

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

    def note(self, node: Node, out: Outbound, failure: Failure, then: Next, mark: Mark) -> None:
        """Count a retry, and note a node fault (breaker) or a full node (busy)."""
        if then is Next.RETRY:
            log.warning("node %s failed before the first token: %s", node.name, failure.reason)
            self._metrics.retries.labels(node.group, node.name, retry_label(failure)).inc()
        now = time.monotonic()
        if mark is Mark.BREAKER:
            self._registry.connection_failed(node, now)
        elif mark is Mark.BUSY:
            model = out.node_models.get(node.node_id, out.model)
            self._registry.note_busy(node, _full_load(node, model), now)

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

    async def open(self, node: Node, out: Outbound, slot_check: int) -> UpstreamResponse | Failure:
        """Send the request; the node's answer once its headers are in and it is fit to relay,
        or the failure it is. Raises :class:`NodeBusy` for an agent's busy answer."""
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
            return await _check_answer(node, out, resp)
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


async def _check_answer(
    node: Node, out: Outbound, resp: UpstreamResponse
) -> UpstreamResponse | Garbage:
    """Refuse garbage while nothing has reached the client, so it can go elsewhere: a stream
    answered with something that is not a stream, a whole answer broken off, or (where JSON is
    due) not complete JSON. A whole answer is read to its end here (the relay reads it again
    for free)."""
    ctype = resp.headers.get("content-type", "")
    streamed = ctype.startswith(STREAM_TYPES)
    if out.stream or (streamed and out.stream is None):
        if streamed:
            return resp
        resp.close()
        return Garbage(f"{node.name} answered a stream as {ctype!r}")
    try:
        body = await resp.read()
    except (OSError, TimeoutError) as exc:
        resp.close()
        return Garbage(f"{node.name} broke off its answer: {exc!r}")
    if out.stream is None:
        return resp  # what kind of answer is due is not known (binary tensors, ...)
    text = body.strip()
    if "json" not in ctype or not text or text[:1] not in b"{[" or text[-1:] not in b"}]":
        resp.close()
        return Garbage(f"{node.name} answered something that is not JSON")
    return resp
