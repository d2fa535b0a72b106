"""The live page at ``/dashboard`` and the JSON it polls (``/api/dashboard``).

No build step and no CDN: one static HTML file with inline CSS and JavaScript, served from the
package. :class:`Activity` keeps the little history the page needs (recent errors, output tokens
over the last minute) and is fed once per request.
"""

from __future__ import annotations

import collections
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from node_protocol.wire import ModelReport
from router.answer_lengths import AnswerLengths
from router.nodes import Node
from router.records import RequestRecord
from router.registry import Registry

WINDOW_S = 60.0
MAX_ERRORS = 20


class Activity:
    """Recent errors and per-second output token counts, bounded in size."""

    def __init__(self) -> None:
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ERRORS)
        self._tokens: collections.deque[tuple[int, int]] = collections.deque()
        self.requests = 0

    def note(self, record: RequestRecord) -> None:
        self.requests += 1
        now = time.time()
        if record.status >= 400 or record.error:
            self.errors.appendleft(
                {
                    "at": round(now, 3),
                    "status": record.status,
                    "error": record.error,
                    "model": record.model,
                    "node": record.node,
                    "correlationId": record.correlation_id,
                }
            )
        tokens = record.output_tokens
        if tokens:
            second = int(now)
            if self._tokens and self._tokens[-1][0] == second:
                self._tokens[-1] = (second, self._tokens[-1][1] + tokens)
            else:
                self._tokens.append((second, tokens))
        while self._tokens and self._tokens[0][0] < now - WINDOW_S:
            self._tokens.popleft()

    def tokens_per_s(self) -> float:
        cutoff = time.time() - WINDOW_S
        return sum(n for t, n in self._tokens if t >= cutoff) / WINDOW_S


ACTIVITY = web.AppKey("activity", Activity)


def _page() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


def snapshot(
    registry: Registry, activity: Activity, lengths: AnswerLengths, now: float
) -> dict[str, Any]:
    threshold = registry.threshold
    groups = []
    for group in registry.groups.values():
        nodes = []
        for node in group.nodes.values():
            report = node.report
            age = None if node.report_received_at is None else now - node.report_received_at
            nodes.append(
                {
                    "id": node.node_id,
                    "name": node.name,
                    "state": node.state(threshold).value,
                    "inFlight": node.in_flight,
                    "reportedInFlight": report.in_flight if report else None,
                    "queueWaiting": report.queue_waiting if report else None,
                    "tokensPerS": report.output_tokens_per_s if report else None,
                    "backend": report.backend_kind if report else None,
                    "reportAgeS": None if age is None else round(age, 2),
                    "backendHealth": report.backend_health if report else None,
                    "failedChecks": node.failed_checks,
                    "breakerOpen": not node.breaker_allows(now),
                    "gpus": [g.to_json() for g in report.gpus] if report else [],
                    "models": [_model(node, m) for m in (report.models if report else ())],
                    "promptCachedShare": _cached_share(node),
                }
            )
        groups.append({"name": group.name, "policy": group.policy, "nodes": nodes})
    return {
        "groups": groups,
        "tokensPerS": round(activity.tokens_per_s(), 2),
        "requests": activity.requests,
        "recentErrors": list(activity.errors),
        "answerLengths": [
            {"model": model, "expectedTokens": round(tokens, 1), "answers": answers}
            for model, tokens, answers in lengths.learned()
        ],
    }


def _model(node: Node, model: ModelReport) -> dict[str, Any]:
    summary = node.prefix_caches.get(model.id)
    ratio = None if summary is None else summary.engine_cached_ratio
    return {
        "id": model.id,
        "loaded": model.loaded,
        "slots": model.max_parallel,
        "engineCachedRatio": None if ratio is None else round(ratio, 3),
    }


def _cached_share(node: Node) -> float | None:
    """Of the prompt characters routed to the node, the share it likely held (estimated)."""
    if not node.prompt_chars:
        return None
    return round(node.prompt_chars_cached / node.prompt_chars, 3)


class DashboardApi:
    def __init__(self, registry: Registry, lengths: AnswerLengths) -> None:
        self._registry = registry
        self._lengths = lengths
        self._page = _page()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/dashboard", self.page), web.get("/api/dashboard", self.data)]

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def data(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = snapshot(self._registry, request.app[ACTIVITY], self._lengths, now)
        return web.Response(body=orjson.dumps(body), content_type="application/json")
