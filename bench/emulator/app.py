"""The emulator's aiohttp application and a ``serve()`` context manager that runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import (
    control,
    llamacpp_face,
    llamacpp_openai,
    lmstudio_face,
    lmstudio_openai,
    ollama_errors,
    ollama_face,
    ollama_openai,
    tgi_face,
    tgi_metrics,
    tgi_openai,
    triton_face,
    triton_metrics,
    triton_repository,
    vllm_face,
    vllm_surfaces,
)
from .appkeys import CONFIG, ENDPOINTS, ENGINE, JOURNAL, Endpoints
from .config import EmulatorConfig
from .engine import Engine

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024**2


def _no_metrics(_app: web.Application, _engine: Engine) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Face:
    """How one backend kind plugs into the app: its error middleware, its route tables (in
    order) and what it keeps beside the engine (its metrics)."""

    middleware: Middleware
    routes: tuple[Callable[[web.Application], None], ...]
    attach: Callable[[web.Application, Engine], None] = _no_metrics
    metrics_path: str | None = None  # Prometheus on the main port


FACES: dict[str, Face] = {
    "vllm": Face(
        vllm_face.middleware,
        (vllm_face.add_routes, vllm_surfaces.add_routes),
        vllm_face.attach,
        "/metrics",
    ),
    "ollama": Face(ollama_errors.middleware, (ollama_face.add_routes, ollama_openai.add_routes)),
    "tgi": Face(
        tgi_face.middleware,
        (tgi_face.add_routes, tgi_openai.add_routes),
        tgi_metrics.attach,
        "/metrics",
    ),
    "triton": Face(
        triton_face.middleware,
        (triton_face.add_routes, triton_repository.add_routes),
        triton_metrics.attach,
    ),
    "lmstudio": Face(
        lmstudio_face.middleware,
        (lmstudio_face.add_routes, lmstudio_openai.add_routes, lmstudio_face.add_catch_all),
    ),
    "llamacpp": Face(
        llamacpp_face.middleware,
        (llamacpp_face.add_routes, llamacpp_openai.add_routes),
        llamacpp_face.attach,
        "/metrics",
    ),
}


def _engine_ctx(face: Face) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        """The engine (its load tasks and keep-alive timers) lives as long as the app."""
        config = app[CONFIG]
        engine = Engine(config)
        await engine.start()
        app[ENGINE] = engine
        face.attach(app, engine)
        log.info("emulated %s up with %s", config.kind, ", ".join(config.models))
        try:
            yield
        finally:
            await engine.close()

    return ctx


def make_app(config: EmulatorConfig) -> web.Application:
    """One emulated backend box: the face ``config.kind`` names plus ``/_emulator/``."""
    face = FACES[config.kind]
    app = web.Application(
        middlewares=[control.journal_middleware, face.middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[JOURNAL] = control.new_journal()
    app[ENDPOINTS] = Endpoints()
    app.cleanup_ctx.append(_engine_ctx(face))
    control.add_routes(app)
    for add_routes in face.routes:
        add_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: its base URL, its metrics URL (None where the backend has no
    Prometheus endpoint) and its app (``.engine`` for direct inspection)."""

    url: str
    app: web.Application
    metrics_url: str | None = None

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE]


def _url(host: str, runner: web.AppRunner) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{runner.addresses[0][1]}"


@asynccontextmanager
async def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 5.0,
    metrics_port: int = 0,
) -> AsyncIterator[RunningEmulator]:
    """Run the emulator on ``host:port`` (0 picks a free port) until the block exits.

    Triton's metrics get their own server on ``metrics_port`` (0 picks a free one), as
    Triton's ``--metrics-port``. Handlers are cancelled when their client disconnects, as a
    real backend aborts the generation. On exit, in-flight requests get ``shutdown_timeout``
    seconds to finish.
    """
    app = make_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=shutdown_timeout, access_log=None
    )
    metrics_runner: web.AppRunner | None = None
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        url = _url(host, runner)
        metrics_url = None
        if config.kind == "triton":
            metrics_runner = web.AppRunner(triton_metrics.metrics_app(app), access_log=None)
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, host, metrics_port).start()
            metrics_url = _url(host, metrics_runner) + "/metrics"
        elif (path := FACES[config.kind].metrics_path) is not None:
            metrics_url = url + path
        app[ENDPOINTS].url, app[ENDPOINTS].metrics_url = url, metrics_url
        yield RunningEmulator(url=url, app=app, metrics_url=metrics_url)
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
