"""Going on with a stream cut after its first token, on another node serving the same model.

The client keeps its connection and its stream: the text it already has goes to the next node
that can continue it (:mod:`router.continuation`), whose stream is spliced into the client's
(:mod:`router.splice`) once its own first token is in hand. Until then a node that fails is
passed over as before a first token (and noted against it the same way); a continuation cut in
turn goes on again elsewhere. Each node is tried once per request, at most ``max_attempts`` for
one cut. When no node can continue, the client gets the SSE error event, as for a stream that
cannot be resumed at all. Every resume is logged, counted in
``router_streams_resumed_total`` and marked in the request's record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from aiohttp import web

from node_protocol.events import AnswerReader
from node_protocol.upstream import UpstreamResponse
from router.continuation import Sent, continuation, read_sent
from router.failover import decide
from router.first_token import first_token
from router.metrics import RouterMetrics
from router.node_calls import NodeCalls, Slot
from router.outbound import Outbound
from router.records import RequestRecord
from router.registry import ROUTABLE, Group, Node, Registry, Reservation
from router.splice import Splicer
from router.stream_relay import Cut, Leg, StreamRelay

log = logging.getLogger("router.proxy")


class Resumer:
    """Finds nodes to go on with cut streams and splices their answers in."""

    def __init__(
        self,
        calls: NodeCalls,
        registry: Registry,
        streams: StreamRelay,
        metrics: RouterMetrics,
        max_attempts: int,
    ) -> None:
        self._calls = calls
        self._registry = registry
        self._streams = streams
        self._metrics = metrics
        self._max_attempts = max_attempts

    async def resume(
        self,
        request: web.Request,
        group: Group,
        order: Sequence[str],
        out: Outbound,
        record: RequestRecord,
        cut: Cut,
        tried: set[str],
        on_release: Callable[[], None] | None,
    ) -> web.StreamResponse:
        """Go on with ``cut`` on the next node that can continue it, as often as it is cut;
        when none can, end it with the error event. ``tried``: nodes not to try again."""
        sent = Sent()
        surface = record.answer.surface
        while True:
            read_sent(surface, cut.transcript.take(), sent)
            more = None
            if sent.only_text and not self._streams.stopping:
                more = continuation(surface, out.body, sent.text, record.tokens)
            if more is None:
                break
            going_on = dataclasses.replace(out, body=more.body)
            resumed = None
            for node in self._takers(group, order, going_on, more.kinds, tried):
                with Slot(Reservation(node, out.model), on_release):
                    leg = await self._open_leg(node, going_on, record, sent)
                    if leg is not None:
                        resumed = await self._go_on(request, cut, leg, record, out.done_marker)
                        break
            if resumed is None:
                break  # no node could go on with it
            if not isinstance(resumed, Cut):
                return resumed
            cut = resumed
        await self._streams.end_cut(cut, record)
        return cut.response

    async def _go_on(
        self, request: web.Request, cut: Cut, leg: Leg, record: RequestRecord, done_marker: bool
    ) -> web.StreamResponse | Cut:
        log.info(
            "stream %s cut on %s goes on at %s", record.correlation_id, cut.node.name, leg.node.name
        )
        record.node = leg.node.name
        record.resumed += 1
        self._metrics.resumed_streams.labels(cut.node.group, cut.node.name).inc()
        try:
            return await self._streams.resume(request, cut, leg, record, done_marker)
        finally:
            leg.upstream.close()

    def _takers(
        self,
        group: Group,
        order: Sequence[str],
        out: Outbound,
        kinds: frozenset[str],
        tried: set[str],
    ) -> Iterator[Node]:
        """Nodes that may take a continuation, the scheduler's order first: serving the model,
        routable, breaker closed, of a kind that continues; each tried once, at most
        ``max_attempts`` for one cut."""
        now = time.monotonic()
        threshold = self._registry.threshold
        ids = [*order, *out.node_models, *(n.node_id for n in group.nodes_serving(out.model))]
        taken = 0
        for node_id in ids:
            node = group.nodes.get(node_id)
            if node_id in tried or node is None or node.report is None:
                continue
            if node.report.backend_kind not in kinds or node.state(threshold) not in ROUTABLE:
                continue
            if not node.breaker_allows(now):
                continue
            if taken >= self._max_attempts:
                return
            tried.add(node_id)
            taken += 1
            yield node

    async def _open_leg(
        self, node: Node, out: Outbound, record: RequestRecord, sent: Sent
    ) -> Leg | None:
        """A continuation's answer from ``node`` up to its first token, or None (a failure,
        noted against the node as one before a first token)."""
        record.attempts += 1
        opened = await self._calls.open(node, out, 0)
        if isinstance(opened, UpstreamResponse):
            if opened.status >= 300:  # it cannot take this continuation: no fault of its own
                log.warning("node %s refused a continuation (%d)", node.name, opened.status)
                opened.close()
                return None
            surface = record.answer.surface
            probe = AnswerReader(surface)
            try:
                got = await first_token(opened, probe, probe.feed, node.name)
            except BaseException:  # the client left: the node must stop generating
                opened.close()
                raise
            if isinstance(got, bytes):
                self._registry.connection_ok(node)
                splicer = Splicer(surface, sent.stream_id, sent.created, record.tokens)
                return Leg(opened, node, out.renaming_for(node), got, False, splicer)
            opened.close()
            failure = got
        else:
            failure = opened
        decision = decide(failure)
        self._calls.note(node, out, failure, decision.next, decision.node)
        return None
