"""A stand-in for llama.cpp's ``llama-server`` on a real socket: the control answers the agent
reads, in the shapes the real server gives (trimmed), and the knobs a test turns.

The suite in ``tests/conformance`` runs the agent against the real server too; this one lets a
test set what the real one cannot be made to show on demand (loading, no ``--metrics``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from .fake_streams import answering

METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {prompt}
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total {cached}
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 28
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing {processing}
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred {deferred}
"""


@dataclass
class LlamaCppControls:
    loading: bool = False  # /health answers 503 "Loading model"
    server_header: bool = True  # False: as behind a proxy that drops it
    metrics: bool = True  # False: started without --metrics
    slots: int = 2
    n_ctx: int = 4096
    processing: int = 0
    deferred: int = 0
    prompt_tokens: int = 35
    cached_tokens: int = 29
    answering: asyncio.Event = field(default_factory=answering)  # cleared: answers nothing


class FakeLlamaCpp:
    def __init__(self) -> None:
        self.ctl = LlamaCppControls()
        self.peers: set[object] = set()  # the client ends of every connection that asked
        self.unanswered: list[str] = []  # the paths asked while it answered nothing
        self.app = web.Application(middlewares=[self._server_header])
        r = self.app.router
        r.add_get("/health", self.health)
        r.add_get("/props", self.props)
        r.add_get("/slots", self.slots)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models)

    @web.middleware
    async def _server_header(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = {"Server": "llama.cpp"} if self.ctl.server_header else {}
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        if not self.ctl.answering.is_set():
            self.unanswered.append(request.path)
            await self.ctl.answering.wait()
        try:
            resp = await handler(request)
        except web.HTTPException as exc:  # unknown paths too answer with the header
            exc.headers.update(header)
            raise
        resp.headers.update(header)
        return resp

    async def health(self, request: web.Request) -> web.Response:
        if self.ctl.loading:
            error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            return web.json_response({"error": error}, status=503)
        return web.json_response({"status": "ok"})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "default_generation_settings": {
                    "params": {"n_predict": -1},
                    "n_ctx": self.ctl.n_ctx,
                },
                "total_slots": self.ctl.slots,
                "model_alias": "tiny",
                "model_path": "/models/tiny.gguf",
                "build_info": "b1-0c1e570",
                "endpoint_slots": True,
                "endpoint_metrics": self.ctl.metrics,
            }
        )

    async def slots(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "id": i,
                    "n_ctx": self.ctl.n_ctx,
                    "speculative": False,
                    "is_processing": i < self.ctl.processing,
                }
                for i in range(self.ctl.slots)
            ]
        )

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.ctl.metrics:
            message = "This server does not support metrics endpoint. Start it with `--metrics`"
            error = {"code": 501, "message": message, "type": "not_supported_error"}
            return web.json_response({"error": error}, status=501)
        text = METRICS.format(
            prompt=self.ctl.prompt_tokens,
            cached=self.ctl.cached_tokens,
            processing=self.ctl.processing,
            deferred=self.ctl.deferred,
        )
        return web.Response(text=text, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": "tiny",
            "aliases": ["tiny"],
            "object": "model",
            "owned_by": "llamacpp",
            "meta": {"n_ctx": self.ctl.n_ctx, "n_ctx_train": 8192, "size": 17456128},
        }
        return web.json_response({"models": [{"name": "tiny"}], "object": "list", "data": [card]})
