"""LM Studio's server: its model lists, load API and error shapes (backends.md §6).

There is no health path: an unknown path or method (``GET /`` too) answers 200 with
``{"error":"Unexpected endpoint or method. (GET /)"}``. ``/api/v0/models`` reports ``state``
``loaded`` / ``not-loaded``; ``/api/v1/models`` lists ``loaded_instances`` with their
``config.context_length`` and ``config.parallel``. Models load just in time on a request (JIT,
with an idle TTL) or through ``POST /api/v1/models/load`` (no TTL, never auto-evicted).
Errors: OpenAI's envelope where LM Studio gives a type (``Invalid model identifier``), a plain
``{"error": "..."}`` where it does not (``No models loaded``), and ``{"error": {"type",
"message"}}`` on the v1 REST routes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .capacity import ModelSpec
from .catalog import QUANTIZATION, QUANTIZATION_BITS, facts
from .errors import FaceError, face_middleware
from .request_body import json_object
from .residency import LoadFailed, ModelState
from .streaming import json_response

NO_MODELS = (
    "No models loaded. Please load a model in the developer page or use the 'lms load' command."
)
EVAL_BATCH_SIZE = 512
LOAD_CONFIGS = web.AppKey("emulator.lmstudio_load_configs", dict[str, dict[str, Any]])


# ---- errors ---------------------------------------------------------------------------------


def _render(request: web.Request, exc: FaceError) -> web.Response:
    if request.path.startswith("/api/v1/"):
        error: dict[str, Any] = {"type": exc.kind or "internal_error", "message": exc.message}
        return json_response({"error": error}, exc.status)
    if exc.kind is None:
        return json_response({"error": exc.message}, exc.status)
    error = {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}
    return json_response({"error": error}, exc.status)


async def unexpected(request: web.Request) -> web.Response:
    """LM Studio logs "Unexpected endpoint or method" and answers 200 anyway."""
    return _unmatched(request, 200)


def _unmatched(request: web.Request, _status: int) -> web.Response:
    return json_response(
        {"error": f"Unexpected endpoint or method. ({request.method} {request.path})"}
    )


middleware = face_middleware(_render, _unmatched)


def invalid_model(requested: Any, known: list[str]) -> FaceError:
    examples = ", ".join(f'"{m}"' for m in known[:3])
    return FaceError(
        400,
        f'Invalid model identifier "{requested}". Please specify a valid downloaded model '
        f"(e.g., {examples}).",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def load_error(name: str, exc: LoadFailed) -> FaceError:
    return FaceError(500, f'Failed to load model "{name}". Error: {exc}', "server_error")


def resolve(request: web.Request, requested: Any) -> str:
    """The model a request names: any downloaded one with JIT on, a loaded one without;
    absent means the first loaded model."""
    engine = request.app[ENGINE]
    loaded = [name for name, st in engine.models.items() if st.loaded]
    if requested is None or requested == "":
        if not loaded:
            raise FaceError(400, NO_MODELS)
        return loaded[0]
    if not isinstance(requested, str) or requested not in engine.models:
        raise invalid_model(requested, list(engine.models))
    if not engine.policy.on_demand and requested not in loaded:
        if not loaded:
            raise FaceError(400, NO_MODELS)
        raise invalid_model(requested, loaded)
    return requested


async def read_body(request: web.Request) -> dict[str, Any]:
    return await json_object(
        request,
        lambda _raw, exc: FaceError(400, f"Unexpected token in JSON at position {exc.pos}"),
        lambda _raw: FaceError(400, "Request body must be a JSON object"),
    )


# ---- model lists ----------------------------------------------------------------------------


def _publisher(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else "lmstudio-community"


def _instance_config(request: web.Request, st: ModelState) -> dict[str, Any]:
    asked = request.app[LOAD_CONFIGS].get(st.name, {})
    return {
        "context_length": asked.get("context_length", request.app[CONFIG].context_length),
        "eval_batch_size": EVAL_BATCH_SIZE,
        "parallel": st.gate.capacity,
        "flash_attention": True,
        "offload_kv_cache_to_gpu": True,
    }


def _v0_entry(request: web.Request, spec: ModelSpec, st: ModelState) -> dict[str, Any]:
    about = facts(spec)
    entry: dict[str, Any] = {
        "id": spec.name,
        "object": "model",
        "type": "llm",
        "publisher": _publisher(spec.name),
        "arch": about.family,
        "compatibility_type": "gguf",
        "quantization": QUANTIZATION,
        "state": "loaded" if st.loaded else "not-loaded",
        "max_context_length": request.app[CONFIG].context_length,
    }
    if st.loaded:
        entry["loaded_context_length"] = _instance_config(request, st)["context_length"]
    return entry


def _v1_entry(request: web.Request, spec: ModelSpec, st: ModelState) -> dict[str, Any]:
    about = facts(spec)
    instances = [{"id": spec.name, "config": _instance_config(request, st)}] if st.loaded else []
    return {
        "type": "llm",
        "publisher": _publisher(spec.name),
        "key": spec.name,
        "display_name": spec.name.rsplit("/", 1)[-1],
        "architecture": about.family,
        "quantization": {"name": QUANTIZATION, "bits_per_weight": QUANTIZATION_BITS},
        "size_bytes": about.disk_bytes,
        "params_string": about.params_string,
        "loaded_instances": instances,
        "max_context_length": request.app[CONFIG].context_length,
        "format": "gguf",
        "capabilities": {"vision": False, "trained_for_tool_use": True},
        "description": None,
    }


async def openai_models(request: web.Request) -> web.Response:
    """``/v1/models``: every downloaded model with JIT on, only the loaded ones without."""
    engine = request.app[ENGINE]
    names = [n for n, st in engine.models.items() if engine.policy.on_demand or st.loaded]
    data = [{"id": n, "object": "model", "owned_by": "organization_owner"} for n in names]
    return json_response({"data": data, "object": "list"})


async def v0_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    data = [_v0_entry(request, spec, engine.models[spec.name]) for spec in engine.config.specs]
    return json_response({"object": "list", "data": data})


async def v0_model(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = request.match_info["model"]
    if name not in engine.models:
        raise FaceError(404, f'Model "{name}" not found')
    return json_response(_v0_entry(request, engine.models[name].spec, engine.models[name]))


async def v1_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    models = [_v1_entry(request, spec, engine.models[spec.name]) for spec in engine.config.specs]
    return json_response({"models": models})


# ---- load / unload --------------------------------------------------------------------------


async def load(request: web.Request) -> web.Response:
    body = await read_body(request)
    engine = request.app[ENGINE]
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise FaceError(400, "'model' is required", "invalid_request")
    if name not in engine.models:
        raise FaceError(404, f'Model "{name}" not found.', "model_not_found")
    context = body.get("context_length")
    if context is not None:
        limit = engine.config.context_length
        if isinstance(context, bool) or not isinstance(context, int) or not 0 < context <= limit:
            raise FaceError(400, f"context_length must be between 1 and {limit}", "invalid_request")
        request.app[LOAD_CONFIGS][name] = {"context_length": context}
    else:
        request.app[LOAD_CONFIGS].pop(name, None)
    try:
        seconds = await engine.load(name)
    except LoadFailed as exc:
        raise load_error(name, exc) from exc
    answer: dict[str, Any] = {
        "type": "llm",
        "instance_id": name,
        "load_time_seconds": round(seconds, 3),
        "status": "loaded",
    }
    if body.get("echo_load_config") is True:
        answer["load_config"] = _instance_config(request, engine.models[name])
    return json_response(answer)


async def unload(request: web.Request) -> web.Response:
    body = await read_body(request)
    engine = request.app[ENGINE]
    instance = body.get("instance_id")
    st = engine.models.get(instance) if isinstance(instance, str) else None
    if st is None or not (st.loaded or st.load_task is not None):
        raise FaceError(404, f'No loaded model instance with id "{instance}".', "model_not_found")
    engine.unload(st.name)
    return json_response({"instance_id": st.name})


def add_routes(app: web.Application) -> None:
    """The model routes, then the catch-all that answers 200 to anything else (last)."""
    app[LOAD_CONFIGS] = {}
    router = app.router
    router.add_get("/v1/models", openai_models, allow_head=False)
    router.add_get("/api/v0/models", v0_models, allow_head=False)
    router.add_get("/api/v0/models/{model:.+}", v0_model, allow_head=False)
    router.add_get("/api/v1/models", v1_models, allow_head=False)
    router.add_post("/api/v1/models/load", load)
    router.add_post("/api/v1/models/unload", unload)


def add_catch_all(app: web.Application) -> None:
    app.router.add_route("*", "/{tail:.*}", unexpected)
