"""HuggingFace TGI's router, as the emulator speaks it (backends.md §4).

One model, always loaded. Errors are ``{"error", "error_type"}``; bodies the JSON extractor
rejects get axum's plain-text answers (400 / 415 / 422), unknown routes an empty 404. More
than ``max_concurrent_requests`` in flight is 429 ``Model is overloaded`` — except on streamed
routes, where TGI has already answered 200 and sends the error as an event. SSE events are
written ``data:{...}`` (no space); ``/generate_stream`` ends without ``[DONE]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .config import EmulatorConfig
from .continuation import continued_tokens
from .engine import EngineBusy
from .errors import FaceError, face_middleware
from .job import Job
from .request_body import json_object
from .streaming import StreamFormat, injected_fault, json_response, respond, sse, stream_error
from .tgi_metrics import TGI_METRICS, metrics
from .tokens import prompt_tokens, token_id, token_text

SSE_CONTENT_TYPE = "text/event-stream"
COMPUTE_TYPE = "gpu+optimized"
MAX_CLIENT_BATCH_SIZE = 1  # --max-client-batch-size: the emulator runs one prompt per request
GENERATION_ERROR = "Request failed during generation: "


def info(config: EmulatorConfig) -> dict[str, Any]:
    """``GET /info``: the launcher's settings and the build (docker image) it runs."""
    sha = hashlib.sha1(f"tgi {config.version}".encode()).hexdigest()
    return {
        "model_id": config.models[0],
        "model_sha": hashlib.sha1(config.models[0].encode()).hexdigest(),
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": config.queue_limit,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": config.context_length - 1,
        "max_total_tokens": config.context_length,
        "validation_workers": 2,
        "max_client_batch_size": MAX_CLIENT_BATCH_SIZE,
        "router": "text-generation-router",
        "version": config.version,
        "sha": sha,
        "docker_label": f"sha-{sha[:7]}",
    }


def fingerprint(config: EmulatorConfig) -> str:
    """``system_fingerprint`` of the OpenAI routes: ``<version>-<docker_label|native>``."""
    return f"{config.version}-{info(config)['docker_label']}"


# ---- errors ---------------------------------------------------------------------------------


def _render(_request: web.Request, exc: FaceError) -> web.Response:
    """``{"error", "error_type"}``; a 500 without a type is TGI's incomplete generation."""
    kind = exc.kind or "incomplete_generation"
    return json_response({"error": exc.message, "error_type": kind}, exc.status)


def _unmatched(_request: web.Request, status: int) -> web.Response:
    return web.Response(status=status)  # axum: an empty body


middleware = face_middleware(_render, _unmatched)


def _rejection(status: int, message: str) -> web.HTTPException:
    """What axum's JSON extractor answers, in plain text, before any handler runs."""
    cls = {400: web.HTTPBadRequest, 415: web.HTTPUnsupportedMediaType}
    return cls.get(status, web.HTTPUnprocessableEntity)(text=message)


def deserialize_error(message: str) -> web.HTTPException:
    return _rejection(422, f"Failed to deserialize the JSON body into the target type: {message}")


async def read_body(request: web.Request, required: str) -> dict[str, Any]:
    """The JSON object body, which must carry ``required``; axum's rejections otherwise."""
    if request.content_type != "application/json":
        raise _rejection(415, "Expected request with `Content-Type: application/json`")
    body = await json_object(
        request,
        lambda _raw, exc: _rejection(400, f"Failed to parse the request body as JSON: {exc}"),
        lambda raw: deserialize_error(
            f"invalid type: expected a struct at line 1 column {len(raw)}"
        ),
    )
    if required not in body:
        raise deserialize_error(f"missing field `{required}` at line 1 column 1")
    return body


def int_field(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise deserialize_error(f"invalid value for `{name}`: expected u32")
    return value


# ---- one generation -------------------------------------------------------------------------


def validation_error(message: str) -> FaceError:
    return FaceError(422, f"Input validation error: {message}", "validation")


def _validate(config: EmulatorConfig, prompt: int, max_new: int | None) -> None:
    max_input, max_total = config.context_length - 1, config.context_length
    if max_new == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    if prompt > max_input:
        raise validation_error(f"`inputs` must have less than {max_input} tokens. Given: {prompt}")
    if prompt + (max_new or 0) > max_total:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {max_total}. "
            f"Given: {prompt} `inputs` tokens and {max_new} `max_new_tokens`"
        )


async def generation(
    request: web.Request,
    prompt: int,
    max_new: int | None,
    fmt: StreamFormat | None,
    full: Callable[[Job, str], web.StreamResponse],
    continues: int = 0,
) -> web.StreamResponse:
    """Validate, admit and run one generation; on a streamed route an error before the first
    token is an event on a 200 answer, as TGI sends it. ``continues``: the model's words the
    answer goes on from (:mod:`.continuation`)."""
    engine, stats = request.app[ENGINE], request.app[TGI_METRICS]
    stats.arrive()
    if (faulted := await injected_fault(engine)) is not None:
        return faulted
    try:
        _validate(engine.config, prompt, max_new)
        try:
            job = engine.admit(engine.config.models[0], prompt, max_new, continues=continues)
        except EngineBusy as exc:
            raise FaceError(429, "Model is overloaded", "overloaded") from exc
    except FaceError as exc:
        stats.fail(exc.kind or "generation")
        if fmt is None:
            raise
        return await stream_error(request, fmt, exc)
    stats.validated(prompt, max_new or job.output_tokens)
    async with job:
        return await respond(request, job, fmt, lambda text: full(job, text))


def native_finish(max_new: int | None) -> str:
    """TGI's native finish reason: ``eos_token`` when the model stopped by itself (the OpenAI
    routes call that ``stop``)."""
    return "eos_token" if max_new is None else "length"


# ---- native routes --------------------------------------------------------------------------


def _token(index: int) -> dict[str, Any]:
    logprob = round(-0.05 * (1 + index % 7), 4)
    return {"id": token_id(index), "text": token_text(index), "logprob": logprob, "special": False}


def _timing_headers(job: Job, inputs: str) -> dict[str, str]:
    def ms(seconds: float) -> str:
        return str(int(seconds * 1000))

    end = job.ended_at or job.last_token_at or job.admitted_at
    slot = job.slot_at or end
    inference = end - slot
    return {
        "x-compute-type": COMPUTE_TYPE,
        "x-compute-time": ms(end - job.admitted_at),
        "x-compute-characters": str(len(inputs)),
        "x-total-time": ms(end - job.admitted_at),
        "x-validation-time": "0",
        "x-queue-time": ms(slot - job.admitted_at),
        "x-inference-time": ms(inference),
        "x-time-per-token": ms(inference / max(1, job.generated)),
        "x-prompt-tokens": str(job.prompt_tokens),
        "x-generated-tokens": str(job.generated),
    }


async def _native(request: web.Request, stream: bool | None) -> web.StreamResponse:
    """``/generate`` (stream False), ``/generate_stream`` (True) or ``/`` (the body says)."""
    body = await read_body(request, "inputs")
    inputs = body["inputs"]
    if not isinstance(inputs, str):
        raise deserialize_error("invalid type: expected a string for `inputs`")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise deserialize_error("invalid type: expected struct GenerateParameters")
    max_new = int_field(params.get("max_new_tokens"), "max_new_tokens")
    details = params.get("details") is True
    prefix = inputs if params.get("return_full_text") is True else ""
    compat = stream is None
    streamed = body.get("stream") is True if compat else bool(stream)
    prompt = prompt_tokens([inputs])

    def full(job: Job, text: str) -> web.Response:
        answer: dict[str, Any] = {"generated_text": prefix + text}
        if details:
            answer["details"] = {
                "finish_reason": native_finish(max_new),
                "generated_tokens": job.generated,
                "seed": None,
                "prefill": [],
                "tokens": [_token(job.first + i) for i in range(job.generated)],
            }
        resp = json_response([answer] if compat else answer)
        resp.headers.update(_timing_headers(job, inputs))
        return resp

    first = continued_tokens(inputs)  # /generate takes the prompt as it is: it is continued
    fmt = _stream_format(inputs, prefix, prompt, max_new, details, first) if streamed else None
    return await generation(request, prompt, max_new, fmt, full, first)


def _stream_format(
    inputs: str, prefix: str, prompt: int, max_new: int | None, details: bool, first: int
) -> StreamFormat:
    def token(index: int, text: str, last: bool) -> bytes:
        event: dict[str, Any] = {"index": index + 1, "token": _token(first + index)}
        event["generated_text"] = None
        event["details"] = None
        if last:
            words = (token_text(first + i) for i in range(index + 1))
            event["generated_text"] = prefix + "".join(words)
            if details:
                event["details"] = {
                    "finish_reason": native_finish(max_new),
                    "generated_tokens": index + 1,
                    "seed": None,
                    "input_length": prompt,
                }
        return sse(event, space=False)

    def error(exc: FaceError) -> list[bytes]:
        kind = exc.kind or "generation"
        message = exc.message if exc.kind else GENERATION_ERROR + exc.message
        return [sse({"error": message, "error_type": kind}, space=False)]

    headers = {
        "x-compute-type": COMPUTE_TYPE,
        "x-compute-characters": str(len(inputs)),
        "X-Accel-Buffering": "no",
    }
    return StreamFormat(SSE_CONTENT_TYPE, token, error=error, early_headers=True, headers=headers)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _native(request, stream=False)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await _native(request, stream=True)


async def compat_generate(request: web.Request) -> web.StreamResponse:
    return await _native(request, stream=None)


# ---- info routes ----------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    if request.app[ENGINE].fault.mode == "error_500":
        return json_response({"error": "unhealthy", "error_type": "healthcheck"}, 503)
    return web.Response()


async def info_route(request: web.Request) -> web.Response:
    return json_response(info(request.app[CONFIG]))


async def models(request: web.Request) -> web.Response:
    model_id = request.app[CONFIG].models[0]
    card = {"id": model_id, "object": "model", "created": 0, "owned_by": model_id}
    return json_response({"object": "list", "data": [card]})


def add_routes(app: web.Application) -> None:
    router = app.router
    for path in ("/", "/health", "/ping"):
        router.add_get(path, health, allow_head=False)
    router.add_post("/", compat_generate)
    router.add_get("/info", info_route, allow_head=False)
    router.add_get("/v1/models", models, allow_head=False)
    router.add_get("/metrics", metrics, allow_head=False)
    router.add_post("/generate", generate)
    router.add_post("/generate_stream", generate_stream)
