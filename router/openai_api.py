"""The OpenAI-compatible surface: ``/{group}/v1/...``, ``/{group}/...`` and ``/v1/...``.

Only what routing needs is read from the body (``model``, and the shape checks that let a bad
request fail here with a clear 400 rather than at a node); the bytes go upstream untouched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from router.dashboard import ACTIVITY
from router.errors import (
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    RouterError,
)
from router.metrics import METRICS
from router.proxy import FORWARDER, Outbound
from router.records import RequestRecord
from router.registry import ROUTABLE, Group, Registry
from router.scheduling import Scheduler, candidate_for
from router.settings import RouterSettings


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI operation: the node path it goes to and what its body must hold."""

    path: str
    required_list: str | None


CHAT = Endpoint("/v1/chat/completions", "messages")
COMPLETIONS = Endpoint("/v1/completions", None)
EMBEDDINGS = Endpoint("/v1/embeddings", None)
MAX_MODEL_NAME = 256


def parse_body(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Check the parts of an OpenAI body the router relies on; raise InvalidRequest if bad."""
    if not body:
        raise InvalidRequest("request body is empty: expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = parsed.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    if endpoint.required_list is not None:
        items = parsed.get(endpoint.required_list)
        if not isinstance(items, list) or not items:
            raise InvalidRequest(
                f"'{endpoint.required_list}' must be a non-empty array",
                param=endpoint.required_list,
            )
    stream = parsed.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return parsed


class OpenAIApi:
    """Handlers bound to the router's registry, scheduler and forwarder."""

    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        scheduler: Scheduler,
        clock: Any = time.monotonic,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._scheduler = scheduler
        self._clock = clock
        self._started = int(time.time())

    def group_of(self, request: web.Request) -> Group:
        name = request.match_info.get("group", self._settings.default_group)
        group = self._registry.groups.get(name)
        if group is None:
            raise NotFound(f"no server group named '{name}'", code="group_not_found")
        return group

    def routes(self) -> list[web.RouteDef]:
        ops = [
            ("chat/completions", self.chat_completions),
            ("completions", self.completions),
            ("embeddings", self.embeddings),
        ]
        table: list[web.RouteDef] = []
        for prefix in ("/v1", "/{group}/v1", "/{group}"):
            for suffix, handler in ops:
                table.append(web.post(f"{prefix}/{suffix}", handler))
            table.append(web.get(f"{prefix}/models", self.list_models))
            table.append(web.get(f"{prefix}/models/{{model:.+}}", self.get_model))
        table.append(web.post("/{group}/infer", self.chat_completions))
        return table

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, COMPLETIONS)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, EMBEDDINGS)

    async def _route(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        group = self.group_of(request)
        headers = request.headers
        record = RequestRecord(
            group=group.name,
            model="-",
            endpoint=endpoint.path,
            tenant=headers.get("X-Octopus-Tenant-Id"),
            correlation_id=headers.get("X-Octopus-Correlation-Id") or uuid.uuid4().hex,
        )
        metrics = request.config_dict[METRICS]
        in_progress = metrics.in_progress.labels(group.name)
        in_progress.inc()
        try:
            return await self._dispatch(request, endpoint, group, record)
        except RouterError as err:
            record.status = err.status
            record.error = err.code or err.type
            metrics.rejections.labels(group.name, record.error).inc()
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            record.status = 499
            record.error = "client_gone"
            raise
        finally:
            record.t_end = time.perf_counter()
            in_progress.dec()
            metrics.observe(record)
            request.config_dict[ACTIVITY].note(record)
            record.log()

    async def _dispatch(
        self, request: web.Request, endpoint: Endpoint, group: Group, record: RequestRecord
    ) -> web.StreamResponse:
        if (request.content_length or 0) > self._settings.max_body_bytes:
            raise PayloadTooLarge(
                f"request body is over the limit of {self._settings.max_body_bytes} bytes"
            )
        body = await request.read()
        model: str = parse_body(body, endpoint)["model"]
        if model not in group.model_index:
            record.model = "other"
            raise ModelNotFound(
                f"model '{model}' is not served by group '{group.name}'", param="model"
            )
        record.model = model
        now = self._clock()
        threshold = self._registry.threshold
        stale_after = 3 * self._settings.report_interval_s
        candidates = [
            c
            for node in group.nodes_serving(model)
            if (c := candidate_for(node, model, threshold, now, stale_after)) is not None
        ]
        if not candidates:
            raise NoCapacity(
                f"no healthy node serves model '{model}' right now",
                retry_after_s=self._settings.retry_after_s,
            )
        order = self._scheduler.order(group.policy, f"{group.name}/{model}", candidates)
        headers = request.headers
        out = Outbound(
            path=endpoint.path,
            body=body,
            model=model,
            correlation_id=record.correlation_id,
            tenant_id=record.tenant,
            session_id=headers.get("X-Octopus-Session-Id"),
        )
        return await request.config_dict[FORWARDER].forward(request, group, order, out, record)

    def _served_models(self, group: Group) -> dict[str, dict[str, Any]]:
        threshold = self._registry.threshold
        cards: dict[str, dict[str, Any]] = {}
        for node in group.nodes.values():
            if node.state(threshold) not in ROUTABLE:
                continue
            for model in node.models():
                for model_id in (model.id, *model.aliases):
                    card = cards.setdefault(
                        model_id,
                        {
                            "id": model_id,
                            "object": "model",
                            "created": self._started,
                            "owned_by": group.name,
                            "loaded": False,
                            "nodes": 0,
                        },
                    )
                    card["nodes"] += 1
                    card["loaded"] = card["loaded"] or model.loaded
        return cards

    async def list_models(self, request: web.Request) -> web.Response:
        cards = self._served_models(self.group_of(request))
        data = [cards[k] for k in sorted(cards)]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def get_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        card = self._served_models(self.group_of(request)).get(model)
        if card is None:
            raise ModelNotFound(f"model '{model}' is not served by this group", param="model")
        return web.json_response(card, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
