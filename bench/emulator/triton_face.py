"""NVIDIA Triton's KServe v2 HTTP endpoint, as the emulator speaks it (backends.md §5).

Each served model is a text-in / text-out model shaped like the vLLM backend's: BYTES input
``text_input`` (plus ``stream``, ``sampling_parameters``, ``exclude_input_in_output``) and
BYTES output ``text_output``, with one version, ``1``. Health answers empty bodies, 200 or
**400**; native errors are ``{"error": "..."}`` with Triton's status mapping (unknown or
unloaded model 404, bad request 400, queue rejection 503, internal 500). ``generate_stream``
sends ``data: {json}\\n\\n`` per token and no ``[DONE]``. Metrics are on their own port
(:mod:`.triton_metrics`); the repository extension is :mod:`.triton_repository`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .continuation import continued_tokens
from .control import note
from .engine import EngineBusy
from .errors import FaceError, face_middleware
from .job import Job
from .residency import ModelState
from .streaming import StreamFormat, injected_fault, json_response, respond, sse
from .tokens import prompt_tokens
from .triton_metrics import TRITON_METRICS
from .triton_repository import VERSION, model_state, read_optional_json, server_ready

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
EXTENSIONS = (
    "classification", "sequence", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "system_shared_memory", "cuda_shared_memory",
    "binary_tensor_data", "parameters", "statistics", "trace", "logging",
)  # fmt: skip
INPUTS = (
    {"name": "text_input", "datatype": "BYTES", "shape": [1]},
    {"name": "stream", "datatype": "BOOL", "shape": [1]},
    {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1]},
    {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1]},
)
OUTPUTS = ({"name": "text_output", "datatype": "BYTES", "shape": [-1]},)
_INPUT_NAMES = tuple(str(i["name"]) for i in INPUTS)
_UNKNOWN_ID = "<id_unknown>"


def _render(_request: web.Request, exc: FaceError) -> web.Response:
    return json_response({"error": exc.message}, exc.status)


def _unmatched(_request: web.Request, status: int) -> web.Response:
    return _render(
        _request, FaceError(status, "Not Found" if status == 404 else "Method Not Allowed")
    )


middleware = face_middleware(_render, _unmatched)


# ---- health and metadata --------------------------------------------------------------------


async def live(_request: web.Request) -> web.Response:
    return web.Response()


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if server_ready(request.app[ENGINE]) else 400)


async def server_metadata(request: web.Request) -> web.Response:
    version = request.app[CONFIG].version
    return json_response({"name": "triton", "version": version, "extensions": list(EXTENSIONS)})


def _model(request: web.Request, must_be_ready: bool = True) -> ModelState:
    """The model (and version) the path names; Triton's errors when it cannot serve."""
    name = request.match_info["model"]
    version = request.match_info.get("version", VERSION)
    st = request.app[ENGINE].models.get(name)
    unknown = f"Request for unknown model: '{name}'"
    if st is None or (model_state(st) is None and must_be_ready):
        raise FaceError(404, f"{unknown} is not found")
    if not version.isdigit():
        raise FaceError(
            400,
            f"failed to get model version from specified version string '{version}' "
            "(details: stoll), version should be an integral value > 0",
        )
    if version != VERSION:
        raise FaceError(404, f"{unknown} version {version} is not found")
    if must_be_ready and (not st.loaded or st.unloading):
        raise FaceError(404, f"{unknown} has no available versions")
    return st


async def model_metadata(request: web.Request) -> web.Response:
    st = _model(request)
    metadata = {
        "name": st.name,
        "versions": [VERSION],
        "platform": "vllm",
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS),
    }
    return json_response(metadata)


async def model_ready(request: web.Request) -> web.Response:
    try:
        st = _model(request, must_be_ready=False)
    except FaceError as exc:
        if exc.status != 404:
            raise
        st = None
    if st is None or not st.loaded or st.unloading:
        raise FaceError(400, "Model version not ready")
    return web.Response()


# ---- inference ------------------------------------------------------------------------------


async def _read(request: web.Request) -> dict[str, Any]:
    body = await read_optional_json(request)
    note(request, request.match_info["model"], request.path.endswith("_stream"))
    return body


def _max_tokens(parameters: Any, sampling: Any) -> int | None:
    """``max_tokens`` from the request parameters or the ``sampling_parameters`` JSON."""
    for source in (parameters, sampling):
        if isinstance(source, str):
            try:
                source = orjson.loads(source)
            except orjson.JSONDecodeError as exc:
                raise FaceError(400, f"failed to parse sampling_parameters: {exc}") from exc
        if isinstance(source, dict) and "max_tokens" in source:
            value = source["max_tokens"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FaceError(400, f"max_tokens must be a positive integer, got {value!r}")
            return value
    return None


def _check_inputs(names: list[str], model: str, rid: str) -> None:
    for name in names:
        if name not in _INPUT_NAMES:
            raise FaceError(
                400, f"[request id: {rid}] unexpected inference input '{name}' for model '{model}'"
            )
    if "text_input" not in names:
        raise FaceError(
            400,
            f"[request id: {rid}] expected number of inputs between 1 and {len(INPUTS)} "
            f"but got {len(names)} inputs for model '{model}'",
        )


def _admit(request: web.Request, st: ModelState, text: str, max_tokens: int | None) -> Job:
    try:
        # A text_input is a plain prompt: the model continues it (:mod:`.continuation`).
        engine = request.app[ENGINE]
        return engine.admit(
            st.name, prompt_tokens([text]), max_tokens, continues=continued_tokens(text)
        )
    except EngineBusy as exc:
        request.app[TRITON_METRICS].reject(st.name)
        raise FaceError(503, "Exceeds maximum queue size") from exc


def _head(body: dict[str, Any], st: ModelState) -> dict[str, Any]:
    """What every response starts with (keys in the order Triton writes them)."""
    head: dict[str, Any] = {"id": body["id"]} if isinstance(body.get("id"), str) else {}
    return head | {"model_name": st.name, "model_version": VERSION}


async def infer(request: web.Request) -> web.StreamResponse:
    """KServe ``infer`` with JSON tensors: ``text_input`` in, ``text_output`` out."""
    body = await _read(request)
    st = _model(request)
    rid = body.get("id") if isinstance(body.get("id"), str) else _UNKNOWN_ID
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise FaceError(400, "Unable to parse 'inputs': attempt to access non-existing object")
    by_name = {str(t.get("name")): t for t in tensors}
    _check_inputs(list(by_name), st.name, str(rid))
    data = by_name["text_input"].get("data")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise FaceError(400, f"[request id: {rid}] unable to parse 'data' of input 'text_input'")
    sampling = by_name.get("sampling_parameters", {}).get("data", [None])[0]
    max_tokens = _max_tokens(body.get("parameters"), sampling)
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted

    def full(text: str) -> web.Response:
        output = {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [text]}
        return json_response({**_head(body, st), "outputs": [output]})

    async with _admit(request, st, data[0], max_tokens) as job:
        return await respond(request, job, None, full)


async def _generate(request: web.Request, stream: bool) -> web.StreamResponse:
    body = await _read(request)
    st = _model(request)
    rid = body.get("id") if isinstance(body.get("id"), str) else _UNKNOWN_ID
    names = [k for k in body if k not in ("id", "parameters")]
    _check_inputs(names, st.name, str(rid))
    text = body["text_input"]
    if not isinstance(text, str):
        raise FaceError(400, "Unable to parse 'text_input': expected a string")
    max_tokens = _max_tokens(body.get("parameters"), body.get("sampling_parameters"))
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted
    head = _head(body, st)
    fmt = StreamFormat(
        SSE_CONTENT_TYPE,
        token=lambda _i, piece, _last: sse({**head, "text_output": piece}),
        error=lambda exc: [sse({"error": exc.message})],
    )

    def full(whole: str) -> web.Response:
        return json_response({**head, "text_output": whole})

    async with _admit(request, st, text, max_tokens) as job:
        return await respond(request, job, fmt if stream else None, full)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=False)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await _generate(request, stream=True)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v2/health/live", live, allow_head=False)
    router.add_get("/v2/health/ready", ready, allow_head=False)
    router.add_get("/v2", server_metadata, allow_head=False)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        router.add_get(base, model_metadata, allow_head=False)
        router.add_get(base + "/ready", model_ready, allow_head=False)
        router.add_post(base + "/infer", infer)
        router.add_post(base + "/generate", generate)
        router.add_post(base + "/generate_stream", generate_stream)
