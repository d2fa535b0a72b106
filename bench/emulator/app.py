"""The emulator's aiohttp application and a ``serve()`` context manager that runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from . import control, ollama_errors, ollama_face, ollama_openai, vllm_face
from .appkeys import CONFIG, ENGINE, JOURNAL, METRICS
from .config import EmulatorConfig
from .engine import Engine
from .vllm_metrics import vllm_registry

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024**2


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    """The engine (its load tasks and keep-alive timers) lives as long as the app."""
    config = app[CONFIG]
    engine = Engine(config)
    await engine.start()
    app[ENGINE] = engine
    if config.kind == "vllm":
        app[METRICS] = vllm_registry(engine, config.names[0])
    log.info("emulated %s up with %s", config.kind, ", ".join(config.models))
    try:
        yield
    finally:
        await engine.close()


def make_app(config: EmulatorConfig) -> web.Application:
    """One emulated backend box: the face ``config.kind`` names plus ``/_emulator/``."""
    face_middleware = vllm_face.middleware if config.kind == "vllm" else ollama_errors.middleware
    app = web.Application(
        middlewares=[control.journal_middleware, face_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[JOURNAL] = control.new_journal()
    app.cleanup_ctx.append(_engine_ctx)
    control.add_routes(app)
    if config.kind == "vllm":
        vllm_face.add_routes(app)
    else:
        ollama_face.add_routes(app)
        ollama_openai.add_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: its base URL and its app (``.engine`` for direct inspection)."""

    url: str
    app: web.Application

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE]


@asynccontextmanager
async def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 5.0,
) -> AsyncIterator[RunningEmulator]:
    """Run the emulator on ``host:port`` (0 picks a free port) until the block exits.

    Handlers are cancelled when their client disconnects, as a real backend aborts the
    generation. On exit, in-flight requests get ``shutdown_timeout`` seconds to finish.
    """
    app = make_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=shutdown_timeout, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield RunningEmulator(url=f"http://{shown}:{bound}", app=app)
    finally:
        await runner.cleanup()
