"""Assembles the router: ``make_app(settings)`` and ``serve(settings)``.

Long-lived resources (the pooled client session, the health monitor) live in ``cleanup_ctx``
under typed ``web.AppKey`` s; nothing is global. Long-lived loops run supervised
(:class:`node_protocol.supervision.Supervised`, listed under ``TASKS``): a failure is logged with
its traceback and the loop restarted with backoff; ``/ready`` answers 503 while one is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from node_protocol.supervision import Supervised, not_ready
from node_protocol.upstream import UpstreamPool
from node_protocol.wire import Registration
from router.access_log import ACCESS_LOG, AccessLog, close_access_log
from router.admission import ADMISSION, Admission, AdmissionLimits
from router.aliases import Aliases
from router.answer_lengths import AnswerLengths
from router.anthropic_api import AnthropicApi
from router.auth import AUTH, Authenticator, HostAllowlist, auth_middleware
from router.dashboard import ACTIVITY, Activity, DashboardApi
from router.dispatch import DISPATCHER, Dispatcher
from router.errors import error_middleware
from router.fleet_metrics import FleetMetrics
from router.groups_api import GroupsApi
from router.ledger import Ledger
from router.limits import BodyLimits, TenantRateLimiter
from router.metrics import ADMISSION_QUEUES, FLEET, METRICS, RouterMetrics, metrics_handler
from router.monitor import Monitor
from router.ollama_api import OllamaApi
from router.openai_api import OpenAIApi
from router.openapi import OpenApiDoc
from router.proxy import FORWARDER, Forwarder
from router.registry import Node, Registry
from router.responses_api import ResponsesApi
from router.scheduling import Scheduler
from router.server import RouterRunner
from router.settings import RouterSettings
from router.triton_api import TritonApi

SETTINGS = web.AppKey("settings", RouterSettings)
REGISTRY = web.AppKey("registry", Registry)
SCHEDULER = web.AppKey("scheduler", Scheduler)
SESSION = web.AppKey("session", aiohttp.ClientSession)
TASKS = web.AppKey("tasks", list[Supervised])  # the router's long-lived loops
STOPPING = web.AppKey("stopping", asyncio.Event)
STARTED_AT = web.AppKey("started_at", float)
log = logging.getLogger("router")


def _registry_from(settings: RouterSettings) -> Registry:
    registry = Registry(
        settings.default_policy, settings.failure_threshold, Aliases(settings.aliases)
    )
    registry.ensure_group(settings.default_group).declared = True
    now = time.monotonic()
    for group in settings.groups:
        declared = registry.ensure_group(group.name, group.policy)
        declared.policy, declared.declared = group.policy, True
        declared.prefix_routing = group.prefix_routing
        for static in group.nodes:
            reg = Registration(
                name=static.name,
                base_url=static.base_url,
                health_url=static.health_url,
                weight=static.weight,
            )
            registry.register(group.name, reg, now, static=True)
    return registry


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstream_ssl: ssl.SSLContext | bool = True
    if settings.upstream_ca_file:
        upstream_ssl = ssl.create_default_context(cafile=settings.upstream_ca_file)
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=30, ssl=upstream_ssl
    )
    app[SESSION] = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=settings.timeouts.total_s,
            sock_connect=settings.timeouts.connect_s,
            sock_read=settings.timeouts.idle_s,
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
    pool = UpstreamPool(upstream_ssl if isinstance(upstream_ssl, ssl.SSLContext) else None)
    app[FORWARDER] = Forwarder(pool, app[REGISTRY], settings, app[METRICS])
    registry = app[REGISTRY]

    def forget_connections(node: Node, _group_gone: bool) -> None:
        still_used = any(
            other.base_url == node.base_url
            for group in registry.groups.values()
            for other in group.nodes.values()
        )
        if not still_used:
            pool.forget(node.base_url)

    registry.on_removed.append(forget_connections)
    yield
    pool.close()
    await app[SESSION].close()


async def _monitor(app: web.Application) -> AsyncIterator[None]:
    # Queued requests learn at once when their model's last node went away (503, not a wait).
    monitor = Monitor(
        app[REGISTRY], app[SESSION], app[SETTINGS], on_checked=app[ADMISSION].wake_all
    )
    task = Supervised("monitor", monitor.run, restarts=app[METRICS].task_restarts)
    app[TASKS].append(task)
    async with task:
        yield


def _forget_removed(app: web.Application) -> None:
    """When a node (and maybe its group) is removed, its metric series go too, and a removed
    group's idle admission queues."""
    metrics, admission = app[METRICS], app[ADMISSION]

    def forget(node: Node, group_gone: bool) -> None:
        metrics.forget_node(node.group, node.name)
        if group_gone:
            metrics.forget_group(node.group)
            admission.drop_idle(lambda key: key.partition("/")[0] == node.group)

    app[REGISTRY].on_removed.append(forget)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    """Ready once the router can route: not stopping, every long-lived loop running (a failed
    one is waiting to restart), and past its warm-up (a fresh replica first waits a few report
    intervals so agents can find it and report)."""
    app = request.app
    if app[STOPPING].is_set():
        return web.json_response({"status": "stopping"}, status=503)
    supervised = app[TASKS]
    tasks = {task.name: task.view() for task in supervised}
    reason = not_ready(supervised)
    if reason is not None:
        return web.json_response({"status": reason, "tasks": tasks}, status=503)
    warmup_s = app[SETTINGS].warmup
    heard = any(
        n.report is not None for g in app[REGISTRY].groups.values() for n in g.nodes.values()
    )
    if not heard and time.monotonic() - app[STARTED_AT] < warmup_s:
        return web.json_response({"status": "warming up", "tasks": tasks}, status=503)
    return web.json_response({"status": "ok", "tasks": tasks})


async def _drain_streams(app: web.Application) -> None:
    """SIGTERM: the listener is already closed; let streams finish within the grace period,
    then end the rest with an SSE error event."""
    app[STOPPING].set()
    if FORWARDER in app:
        cut = await app[FORWARDER].drain(app[SETTINGS].shutdown_grace_s)
        if cut:
            log.warning("shutdown grace over: ended %d streams with an error event", cut)


def make_app(settings: RouterSettings) -> web.Application:
    auth = Authenticator(
        settings.api_keys, settings.registration_token_sha256, settings.admin_token_sha256
    )
    # With nothing to check, the auth layer is left out of every request's path.
    middlewares = [error_middleware, auth_middleware] if auth.enabled else [error_middleware]
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[AUTH] = auth
    app[SETTINGS] = settings
    app[REGISTRY] = _registry_from(settings)
    app[SCHEDULER] = Scheduler()
    app[ADMISSION] = Admission(
        AdmissionLimits(
            max_queue=settings.queue_max,
            max_wait_s=settings.queue_wait_s,
            retry_after_s=settings.retry_after_s,
            tenant_weights=settings.tenant_weights,
        ),
        time.monotonic,
    )
    prometheus = CollectorRegistry()
    app[METRICS] = RouterMetrics(prometheus)
    _forget_removed(app)
    app[FLEET] = FleetMetrics(app[REGISTRY])
    app[ADMISSION_QUEUES] = app[ADMISSION].queue_lengths
    app.router.add_get("/metrics", metrics_handler)
    app[ACTIVITY] = Activity()
    app[ACCESS_LOG] = AccessLog(settings.log_format)
    app.on_cleanup.append(close_access_log)
    # what the router learns of each model's answers (routing and the live page read it)
    answer_lengths = AnswerLengths(app[SCHEDULER].params.expected_tokens)
    app.router.add_routes(DashboardApi(app[REGISTRY], answer_lengths).routes())
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/openapi.json", OpenApiDoc().handle)
    app[STOPPING] = asyncio.Event()
    app[TASKS] = []
    app[STARTED_AT] = time.monotonic()
    app.on_shutdown.append(_drain_streams)
    allowlist = HostAllowlist(settings.registration_allowlist)
    app.router.add_routes(GroupsApi(app[REGISTRY], time.monotonic, allowlist, auth).routes())
    app[DISPATCHER] = Dispatcher(
        settings,
        app[REGISTRY],
        app[SCHEDULER],
        app[REGISTRY].aliases,
        Ledger(
            app[METRICS],
            app[ACTIVITY],
            app[ACCESS_LOG],
            answer_lengths,
            TenantRateLimiter(
                settings.tenant_requests_per_minute, settings.tenant_tokens_per_minute
            ),
            app[REGISTRY].aliases.canonical,
        ),
    )
    # OpenAI first: aiohttp tries the "/{group}/..." routes in the order they were added, and
    # the OpenAI ones carry nearly all the traffic (16 failed matches cost ~10 us a request).
    limits = BodyLimits(settings.max_messages, settings.max_n, settings.max_output_tokens)
    app.router.add_routes(OpenAIApi(app[REGISTRY], limits).routes())
    app.router.add_routes(AnthropicApi(limits).routes())
    app.router.add_routes(ResponsesApi(limits).routes())
    app.router.add_routes(OllamaApi(app[REGISTRY], SESSION).routes())
    app.router.add_routes(TritonApi(app[REGISTRY]).routes())
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_monitor)
    return app


@dataclass(frozen=True, slots=True)
class RunningRouter:
    url: str
    app: web.Application


@contextlib.asynccontextmanager
async def serve(settings: RouterSettings) -> AsyncIterator[RunningRouter]:
    """Run the router on ``settings.host:port`` (0 picks a free port) until the block exits."""
    app = make_app(settings)
    runner = RouterRunner(
        app,
        header_timeout_s=settings.client_header_timeout_s,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_grace_s + 5,
        access_log=None,
        max_field_size=settings.max_header_bytes,
        max_line_size=settings.max_header_bytes,
    )
    await runner.setup()
    ssl_context = None
    if settings.tls_cert_file and settings.tls_key_file:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context)
    await site.start()
    for line in app[AUTH].describe():
        log.info("%s", line)
    try:
        port = runner.addresses[0][1]
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        scheme = "https" if ssl_context else "http"
        yield RunningRouter(url=f"{scheme}://{host}:{port}", app=app)
    finally:
        await runner.cleanup()
