"""The backends' own APIs, reachable through the agent on their own paths.

The router calls these paths on the agent's base URL; the agent relays them to the same path on
its backend through the one pass-through proxy (in-flight count, header renaming, streaming
chunk by chunk, cancellation). A route answers only when the backend beside the agent speaks
that API; for any other kind it is a 404 in the OpenAI envelope.

=======  ==========================================================================
Ollama   ``POST /api/chat``, ``/api/generate``, ``/api/embed`` (NDJSON streams);
         ``GET /api/tags``, ``/api/ps``, ``/api/version``
Triton   ``POST /v2/models/{m}[/versions/{v}]/infer|generate|generate_stream`` (SSE);
         ``GET /v2``, ``/v2/health/live|ready``, ``/v2/models/{m}[/versions/{v}][/ready]``;
         ``POST /v2/repository/index``
TGI      ``POST /generate``, ``/generate_stream`` (SSE); ``GET /info``
=======  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .appkeys import BACKEND, PROXY
from .errors import BackendUnreachable, RouteNotServed

_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"

# kind -> (method, path) of every native route the agent relays for that kind.
NATIVE_ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "ollama": (
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("GET", "/api/version"),
    ),
    "triton": (
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("POST", "/v2/repository/index"),
        *(("GET", base) for base in (_MODEL, _VERSION)),
        *(("GET", f"{base}/ready") for base in (_MODEL, _VERSION)),
        *(
            ("POST", f"{base}/{action}")
            for base in (_MODEL, _VERSION)
            for action in ("infer", "generate", "generate_stream")
        ),
    ),
    "tgi": (
        ("POST", "/generate"),
        ("POST", "/generate_stream"),
        ("GET", "/info"),
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _relay_for(kind: str) -> Handler:
    async def relay(request: web.Request) -> web.StreamResponse:
        backend_kind = await request.app[BACKEND].resolved_kind()
        if backend_kind is None:
            raise BackendUnreachable("backend unreachable (its kind is not known yet)")
        if backend_kind != kind:
            raise RouteNotServed(
                f"{request.method} {request.path} is part of the {kind} API; "
                f"this node's backend is {backend_kind}"
            )
        return await request.app[PROXY].forward(request, request.rel_url.raw_path, native=True)

    return relay


def add_native_routes(app: web.Application) -> None:
    """Register every kind's native routes; each checks the backend's kind when called."""
    for kind, routes in NATIVE_ROUTES.items():
        handler = _relay_for(kind)
        for method, path in routes:
            app.router.add_route(method, path, handler)
