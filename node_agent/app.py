"""The agent's aiohttp application and :func:`serve`, which runs it on a socket.

Routes: ``GET /health`` (Octopus's semantics), ``GET /ready`` (503 while one of the reporter's
loops is down, or the backend is not healthy), ``GET /status`` (the current load report),
``GET /metrics`` (the agent's own Prometheus metrics), the OpenAI paths (relayed, or translated
to the generate extension on a Triton node: :mod:`node_agent.triton_openai`), Anthropic Messages
and OpenAI Responses (relayed, or translated to chat: :mod:`node_agent.surfaces`), ``POST /infer``
in both Octopus shapes (:mod:`node_agent.infer`) and the backends' native APIs
(:mod:`node_agent.native`). Long-lived resources (client sessions, backend adapter, GPU source,
reporter) live in ``cleanup_ctx`` under the typed keys of :mod:`node_agent.appkeys`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from node_protocol.supervision import not_ready
from node_protocol.upstream import UpstreamPool

from .appkeys import (
    BACKEND,
    CONTROL_SESSION,
    GATE,
    GPUS,
    METRICS,
    PROMPTS,
    PROXY,
    REPORTER,
    RESOLVER,
    SETTINGS,
    STATS,
)
from .backends.detect import make_backend
from .errors import error_middleware
from .gate import BackendGate
from .gpu import open_gpu_source
from .infer import infer
from .metrics import AgentMetrics
from .native import add_native_routes
from .prompt_caches import PromptCaches
from .proxy import BackendProxy
from .reporter import Reporter
from .router_directory import Resolver, dns_resolver
from .settings import AgentSettings
from .surfaces import SURFACES, NativeSurfaces, add_surface_routes
from .traffic import TrafficStats
from .triton_openai import serve_openai

log = logging.getLogger("node_agent.app")

# (method, agent path, backend path); on Triton these are translated, not relayed.
PROXY_ROUTES = (
    ("POST", "/v1/chat/completions", "/v1/chat/completions"),
    ("POST", "/v1/completions", "/v1/completions"),
    ("POST", "/v1/embeddings", "/v1/embeddings"),
    ("GET", "/v1/models", "/v1/models"),
)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def advertise_url_for(settings: AgentSettings, port: int) -> str:
    """The URL routers use: ``advertise_url``, else ``http://{host or 127.0.0.1}:{port}``."""
    if settings.advertise_url:
        return settings.advertise_url
    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    # Data path: keep-alive connections to the one backend, bytes passed through undecoded.
    backend_pool = UpstreamPool()
    # Control path (health, collection, routers): its own small pool, short timeouts, so it
    # never waits behind proxied streams.
    control_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=32),
        timeout=aiohttp.ClientTimeout(total=s.control_timeout_s, connect=s.connect_timeout_s),
    )
    app[CONTROL_SESSION] = control_session
    # The adapter is made in the next context: read it when the first request comes.
    app[GATE] = BackendGate(lambda: app[BACKEND].concurrency_limit)
    app[PROXY] = BackendProxy(
        backend_pool,
        s.backend_url,
        app[STATS],
        api_key=s.backend_api_key,
        first_byte_timeout_s=s.first_byte_timeout_s,
        idle_timeout_s=s.idle_timeout_s,
        total_timeout_s=s.total_timeout_s,
        connect_timeout_s=s.connect_timeout_s,
        metrics=app[METRICS].requests,
        prompts=app[PROMPTS],
        gate=app[GATE],
    )
    try:
        yield
    finally:
        backend_pool.close()
        await control_session.close()


async def _backend_and_gpus(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    session = app[CONTROL_SESSION]
    app[BACKEND] = make_backend(
        s.backend_kind,
        session,
        s.backend_url,
        api_key=s.backend_api_key,
        timeout_s=s.control_timeout_s,
        max_parallel=s.max_parallel,
        metrics_url=s.backend_metrics_url,
    )
    app[SURFACES] = NativeSurfaces(session, s.backend_url, s.backend_api_key, s.control_timeout_s)
    gpus = await open_gpu_source(s.gpu_source, session, s.backend_url, s.control_timeout_s)
    app[GPUS] = gpus
    try:
        yield
    finally:
        await gpus.close()


async def _reporter(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    reporter = Reporter(
        s,
        app[CONTROL_SESSION],
        app[BACKEND],
        app[GPUS],
        app[STATS],
        resolver=app[RESOLVER],
        prompts=app[PROMPTS],
        restarts=app[METRICS].task_restarts,
        gate=app[GATE],
    )
    app[REPORTER] = reporter
    # Reports are built from now on (for /status); registration waits for reporter.advertise(),
    # which serve() calls once the socket is bound and the port known.
    reporter.start()
    try:
        yield
    finally:
        await reporter.stop()


async def health(request: web.Request) -> web.Response:
    """200 ok when the backend answers 2xx, 503 degraded on another status, 503 unhealthy."""
    state = await request.app[BACKEND].health()
    return web.json_response({"status": state}, status=200 if state == "ok" else 503)


async def ready(request: web.Request) -> web.Response:
    """200 when the reporter's loops all run and the backend is healthy; else 503 saying why
    (a loop waiting to restart after a failure, or the backend's state)."""
    tasks = request.app[REPORTER].tasks
    views = {task.name: task.view() for task in tasks}
    reason = not_ready(tasks)
    if reason is None:
        state = await request.app[BACKEND].health()
        reason = None if state == "ok" else f"backend {state}"
    status = 200 if reason is None else 503
    return web.json_response({"status": reason or "ok", "tasks": views}, status=status)


async def status(request: web.Request) -> web.Response:
    report = await request.app[REPORTER].current()
    return web.json_response(report.to_json())


async def metrics(request: web.Request) -> web.Response:
    return request.app[METRICS].render()


def _forward_to(path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def forward(request: web.Request) -> web.StreamResponse:
        return await serve_openai(request, path)

    return forward


def make_app(settings: AgentSettings, resolver: Resolver = dns_resolver) -> web.Application:
    """The agent application; nothing starts until it is run (resources live in cleanup_ctx)."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[RESOLVER] = resolver
    stats = app[STATS] = TrafficStats()
    prompts = app[PROMPTS] = PromptCaches()
    app[METRICS] = AgentMetrics(stats, lambda: app.get(REPORTER), prompts)
    app.cleanup_ctx.extend([_sessions, _backend_and_gpus, _reporter])
    app.router.add_get("/health", health, allow_head=False)
    app.router.add_get("/ready", ready, allow_head=False)
    app.router.add_get("/status", status, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    for method, path, upstream in PROXY_ROUTES:
        app.router.add_route(method, path, _forward_to(upstream))
    app.router.add_post("/infer", infer)
    add_surface_routes(app)
    add_native_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class RunningAgent:
    """A started agent: ``url`` is what routers are told, ``local_url`` what it is bound to."""

    url: str
    local_url: str
    port: int
    app: web.Application

    @property
    def reporter(self) -> Reporter:
        return self.app[REPORTER]

    @property
    def stats(self) -> TrafficStats:
        return self.app[STATS]

    @property
    def prompts(self) -> PromptCaches:
        return self.app[PROMPTS]


@asynccontextmanager
async def serve(
    settings: AgentSettings, resolver: Resolver = dns_resolver
) -> AsyncIterator[RunningAgent]:
    """Run the agent on ``settings.host``/``port`` (0 picks a free port) until the block exits.

    On exit it deregisters from every router first (so no new requests are sent), then stops
    accepting, lets in-flight requests finish within ``shutdown_timeout_s`` and cleans up.
    """
    app = make_app(settings, resolver)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = int(runner.addresses[0][1])
        url = advertise_url_for(settings, port)
        local_host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
        if ":" in local_host and not local_host.startswith("["):
            local_host = f"[{local_host}]"
        app[REPORTER].advertise(url)
        log.info(
            "node agent for %s listening on port %d, advertised as %s",
            settings.backend_url,
            port,
            url,
        )
        yield RunningAgent(url=url, local_url=f"http://{local_host}:{port}", port=port, app=app)
    finally:
        if REPORTER in app:
            await app[REPORTER].stop()
        await runner.cleanup()
