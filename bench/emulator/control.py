"""Emulator-only endpoints under ``/_emulator/`` and the journal of requests received.

``GET /_emulator/gpus`` is the GPU source a node agent reads in "emulated" mode;
``GET /_emulator/requests`` lets tests see what reached the backend (headers included);
``POST /_emulator/faults`` injects a fault; ``GET /_emulator/state`` shows models, queues and
where the emulator listens (``metricsUrl``). They answer the same on every face.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .appkeys import ENDPOINTS, ENGINE, JOURNAL, JOURNAL_ENTRY
from .faults import Fault
from .streaming import json_response

PREFIX = "/_emulator/"
JOURNAL_SIZE = 1000


def new_journal() -> deque[dict[str, Any]]:
    return deque(maxlen=JOURNAL_SIZE)


@web.middleware
async def journal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every backend request (not the control ones) before handling it."""
    if not request.path.startswith(PREFIX):
        entry: dict[str, Any] = {
            "path": request.path,
            "method": request.method,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "model": None,
            "stream": None,
        }
        request.app[JOURNAL].append(entry)
        request[JOURNAL_ENTRY] = entry
    return await handler(request)


def note(request: web.Request, model: str | None, stream: bool | None) -> None:
    """Add what the handler parsed from the body to the request's journal entry."""
    entry = request.get(JOURNAL_ENTRY)
    if entry is not None:
        entry["model"], entry["stream"] = model, stream


async def gpus(request: web.Request) -> web.Response:
    reports = request.app[ENGINE].gpu_reports()
    return json_response({"gpus": [g.to_json() for g in reports]})


async def requests(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response(
        {
            "requests": [*request.app[JOURNAL]],
            "cancelled": engine.cancelled,
            "completed": engine.completed,
        }
    )


async def set_fault(request: web.Request) -> web.Response:
    try:
        fault = Fault.from_json(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_response({"error": str(exc)}, status=400)
    request.app[ENGINE].fault = fault
    return json_response(fault.to_json())


async def state(request: web.Request) -> web.Response:
    """The engine's snapshot plus where the emulator listens (``metricsUrl``: the Prometheus
    endpoint, on its own port for Triton; null for backends without one)."""
    endpoints = request.app[ENDPOINTS]
    where = {"url": endpoints.url, "metricsUrl": endpoints.metrics_url}
    return json_response({**request.app[ENGINE].snapshot(), **where})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "gpus", gpus)
    app.router.add_get(PREFIX + "requests", requests)
    app.router.add_post(PREFIX + "faults", set_fault)
    app.router.add_get(PREFIX + "state", state)
