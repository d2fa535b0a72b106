"""Triton's KServe v2 HTTP surface on a group: inference and the generate extension.

``/{group}/v2/models/{model}[/versions/{v}]/infer|generate|generate_stream`` route like any
request (the model comes from the path) but only to nodes whose backend is Triton.
``/{group}/v2/health/live`` answers for the router, ``/v2/health/ready`` and
``/v2/models/{model}/ready`` for the group, with Triton's codes: 200 ready, 400 not.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router.dispatch import DISPATCHER, Target
from router.errors import InvalidRequest
from router.registry import ROUTABLE, Registry

TRITON = frozenset({"triton"})
MAX_MODEL_NAME = 256


class TritonApi:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def routes(self) -> list[web.RouteDef]:
        table: list[web.RouteDef] = []
        for op in ("infer", "generate", "generate_stream"):
            handler = self._handler(op)
            table.append(web.post(f"/{{group}}/v2/models/{{model}}/{op}", handler))
            table.append(web.post(f"/{{group}}/v2/models/{{model}}/versions/{{v}}/{op}", handler))
        table += [
            web.get("/{group}/v2/health/live", self.live),
            web.get("/{group}/v2/health/ready", self.ready),
            web.get("/{group}/v2/models/{model}/ready", self.model_ready),
        ]
        return table

    def _handler(self, op: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            model = request.match_info["model"]
            version = request.match_info.get("v")
            if not model or len(model) > MAX_MODEL_NAME:
                raise InvalidRequest("bad model name in the path", param="model")
            path = "/v2/models/{model}" + (f"/versions/{version}" if version else "") + f"/{op}"

            # infer may answer binary tensors: only the generate extension is checked.
            stream = {"generate": False, "generate_stream": True}.get(op)

            def build(body: bytes) -> Target:
                return Target(path, model, body, kinds=TRITON, model_in_body=False, stream=stream)

            return await request.app[DISPATCHER].dispatch(request, f"/v2/{op}", build)

        return handle

    def _ready_models(self, request: web.Request) -> set[str] | None:
        """Models loaded on a routable Triton node, or None when the group has no such node."""
        group = request.app[DISPATCHER].group_of(request)
        threshold = self._registry.threshold
        models: set[str] | None = None
        for node in group.nodes.values():
            report = node.report
            if node.state(threshold) in ROUTABLE and report and report.backend_kind == "triton":
                models = models or set()
                models.update(m.id for m in report.models if m.loaded)
        return models

    async def live(self, request: web.Request) -> web.Response:
        request.app[DISPATCHER].group_of(request)
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready_models(request) is not None else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self._ready_models(request) or set()
        return web.Response(status=200 if request.match_info["model"] in ready else 400)
