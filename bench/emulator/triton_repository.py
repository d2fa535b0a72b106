"""Triton's model repository extension in explicit model-control mode (backends.md §5.2, §5.6).

``POST /v2/repository/index`` lists every model of the repository: a model never loaded has
its ``name`` only; others have ``version`` and ``state`` (``READY``, ``LOADING``,
``UNLOADING``, ``UNAVAILABLE`` with ``reason`` ``unloaded`` or the load error). A load answers
when the model is ready (or failed: 400, and the model stays UNAVAILABLE with the reason);
an unload answers at once and the model unloads when its last request ends. Strict readiness
(the default) is ready only when no model is loading, unloading or failed.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .appkeys import ENGINE
from .control import note
from .engine import Engine
from .errors import FaceError
from .request_body import json_object
from .residency import LoadFailed, ModelState

VERSION = "1"  # every emulated model has one version


def model_state(st: ModelState) -> tuple[str, str] | None:
    """(state, reason) as the index reports it; None for a model never loaded."""
    if st.load_task is not None:
        return "LOADING", ""
    if st.loaded:
        return ("UNLOADING", "") if st.unloading else ("READY", "")
    if st.load_error is not None:
        return "UNAVAILABLE", st.load_error
    if st.ever_loaded:
        return "UNAVAILABLE", "unloaded"
    return None


def server_ready(engine: Engine) -> bool:
    """``--strict-readiness``: every known model READY, or unloaded on purpose."""
    if engine.fault.mode == "error_500":
        return False
    for st in engine.models.values():
        state = model_state(st)
        if state is not None and state != ("READY", "") and state != ("UNAVAILABLE", "unloaded"):
            return False
    return True


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} when there is none; 400 in Triton's words otherwise."""
    return await json_object(
        request,
        lambda _raw, exc: FaceError(400, f"failed to parse the request JSON buffer: {exc}"),
        lambda _raw: FaceError(400, "failed to parse the request JSON buffer: not an object"),
        empty={},
    )


async def index(request: web.Request) -> web.Response:
    body = await read_optional_json(request)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise FaceError(400, "Unable to parse 'ready': attempt to access JSON non-boolean as bool")
    entries: list[dict[str, str]] = []
    for name, st in sorted(request.app[ENGINE].models.items()):
        state = model_state(st)
        if ready_only and (state is None or state[0] != "READY"):
            continue
        entry = {"name": name}
        if state is not None:
            entry |= {"version": VERSION, "state": state[0]}
            if state[1]:
                entry["reason"] = state[1]
        entries.append(entry)
    return web.Response(body=orjson.dumps(entries), content_type="application/json")


def _known(request: web.Request, action: str) -> ModelState:
    name = request.match_info["model"]
    note(request, name, None)
    st = request.app[ENGINE].models.get(name)
    if st is None:
        raise FaceError(400, f"failed to {action} '{name}', failed to poll from model repository")
    return st


async def load(request: web.Request) -> web.Response:
    st = _known(request, "load")
    await read_optional_json(request)  # parameters.config / file: overrides are accepted as-is
    try:
        await request.app[ENGINE].load(st.name)
    except LoadFailed as exc:
        raise FaceError(
            400,
            f"load failed for model '{st.name}': version {VERSION} is at UNAVAILABLE state: "
            f"Internal: {exc};",
        ) from exc
    return web.Response(content_type="application/json")


async def unload(request: web.Request) -> web.Response:
    st = _known(request, "unload")
    await read_optional_json(request)
    request.app[ENGINE].unload(st.name)
    return web.Response(content_type="application/json")


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v2/repository/index", index)
    router.add_post("/v2/repository/models/{model}/load", load)
    router.add_post("/v2/repository/models/{model}/unload", unload)
