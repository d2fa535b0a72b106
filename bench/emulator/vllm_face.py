"""vLLM's OpenAI-compatible server, as the emulator speaks it (backends.md §3); its Anthropic
Messages and Responses routes are :mod:`bench.emulator.vllm_surfaces`.

Errors use vLLM's envelope with an integer ``code``; a streamed answer sends its headers at once,
its role chunk with the first token, ``finish_reason`` on the last token and, when asked, a
usage chunk with ``choices: []`` before ``data: [DONE]``. ``/v1/embeddings`` answers as vLLM does
for a generative model: 400 ``The model does not support Embeddings API``. A chat with
``continue_final_message`` (and ``add_generation_prompt: false``) continues its final assistant
message; a completions prompt is continued (:mod:`.continuation`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from .appkeys import CONFIG, ENGINE, METRICS
from .continuation import chat_continues, prompt_continues
from .engine import Engine, EngineBusy
from .errors import FaceError, face_middleware
from .job import Job
from .openai_fields import (
    FieldError,
    read_generation,
)
from .request_body import json_object
from .streaming import SSE_DONE, StreamFormat, injected_fault, json_response, respond, sse
from .surface_replies import anthropic_error
from .vllm_metrics import vllm_registry

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


class VllmError(FaceError):
    """An error vLLM answers in its envelope (``type`` is ``kind``)."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(status, message, kind, param)


def _envelope(exc: FaceError) -> dict[str, Any]:
    """vLLM's error body: an integer ``code`` (the HTTP status)."""
    kind = exc.kind or ("InternalServerError" if exc.status >= 500 else "BadRequestError")
    return {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.status}}


def _render(request: web.Request, exc: FaceError) -> web.Response:
    """vLLM's envelope; on its Messages route, Anthropic's (vLLM translates its errors there)."""
    if request.path == "/v1/messages":
        kind = exc.kind or ("InternalServerError" if exc.status >= 500 else "BadRequestError")
        return json_response(anthropic_error(exc.status, exc.message, kind), exc.status)
    return json_response(_envelope(exc), exc.status)


def _unmatched(_request: web.Request, status: int) -> web.Response:
    """FastAPI's ``{"detail"}`` for unknown routes and wrong methods."""
    return json_response({"detail": "Not Found" if status == 404 else "Method Not Allowed"}, status)


def _stream_error(exc: FaceError) -> Iterable[bytes]:
    """An error once streaming has begun: the envelope as an event, then ``[DONE]``."""
    return (sse(_envelope(exc)), SSE_DONE)


middleware = face_middleware(_render, _unmatched)


def _schema_error(kind: str, field: str, msg: str) -> VllmError:
    """FastAPI's request-validation error, as vLLM's handler words it."""
    return VllmError(400, str([{"type": kind, "loc": ("body", field), "msg": msg}]), "Bad Request")


@dataclass(frozen=True, slots=True)
class _Ask:
    """The parts of a generation request the emulator acts on."""

    served: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    usage: bool
    continues: int  # the model's words the answer goes on from


async def _read_body(request: web.Request) -> dict[str, Any]:
    return await json_object(
        request,
        lambda _raw, exc: _schema_error("json_invalid", "0", f"JSON decode error: {exc}"),
        lambda _raw: _schema_error(
            "model_attributes_type", "0", "Input should be a valid dictionary"
        ),
    )


def _parse(request: web.Request, body: dict[str, Any], prompt_field: str) -> _Ask:
    config = request.app[CONFIG]
    model = body.get("model")
    if model is not None and model not in config.names:
        raise VllmError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    try:
        if prompt_field not in body:
            raise FieldError(prompt_field, "Field required")
        ask = read_generation(
            body, prompt_field == "messages", max_keys=("max_completion_tokens", "max_tokens")
        )
    except FieldError as exc:
        raise _schema_error("value_error", exc.field, str(exc)) from exc
    prompt, max_tokens = ask.prompt_tokens, ask.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise VllmError(400, f"max_tokens must be at least 1, got {max_tokens}.", "BadRequestError")
    limit = config.context_length
    if prompt + (max_tokens or 0) > limit:
        raise VllmError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + (max_tokens or 0)} tokens ({prompt} in the messages, {max_tokens or 0} "
            "in the completion). Please reduce the length of the messages or completion.",
            "BadRequestError",
        )
    served = model if isinstance(model, str) else config.names[0]
    return _Ask(served, prompt, max_tokens, ask.stream, ask.usage, _continues(body, prompt_field))


def _continues(body: dict[str, Any], prompt_field: str) -> int:
    """A completions prompt is continued; a chat's final assistant message only with
    ``continue_final_message``, which needs ``add_generation_prompt: false``."""
    if prompt_field != "messages":
        return prompt_continues(body.get("prompt"))
    if body.get("continue_final_message") is not True:
        return 0
    if body.get("add_generation_prompt", True) is not False:
        raise VllmError(
            400,
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            "BadRequestError",
        )
    return chat_continues(body.get("messages"), True)


def _admit(request: web.Request, ask: _Ask) -> Job:
    engine = request.app[ENGINE]
    try:
        return engine.admit(
            engine.config.models[0], ask.prompt_tokens, ask.max_tokens, continues=ask.continues
        )
    except EngineBusy as exc:
        limit = engine.config.queue_limit
        raise VllmError(
            503,
            f"The server is overloaded: the waiting queue is full (max_num_queued_reqs={limit}).",
            "ServiceUnavailableError",
        ) from exc


def _usage(job: Job) -> dict[str, int]:
    total = job.prompt_tokens + job.generated
    return {
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": total,
        "completion_tokens": job.generated,
    }


@dataclass(frozen=True, slots=True)
class _Reply:
    """The shapes of one answer: chunks of a stream or the whole body."""

    chat: bool
    served: str
    rid: str
    created: int

    def envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = (
            ("chat.completion.chunk" if chunk else "chat.completion")
            if self.chat
            else "text_completion"
        )
        return {
            "id": self.rid,
            "object": kind,
            "created": self.created,
            "model": self.served,
            "choices": choices,
        }

    def stream_format(self, job: Job, usage: bool) -> StreamFormat:
        def head() -> Iterable[bytes]:
            if self.chat:
                delta = {"role": "assistant", "content": ""}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                yield sse(self.envelope([choice], chunk=True))

        def token(_index: int, text: str, last: bool) -> bytes:
            choice: dict[str, Any] = {"index": 0}
            choice |= {"delta": {"content": text}} if self.chat else {"text": text}
            choice |= {"logprobs": None, "finish_reason": job.finish_reason if last else None}
            if last or not self.chat:
                choice["stop_reason"] = None
            return sse(self.envelope([choice], chunk=True))

        def tail() -> Iterable[bytes]:
            if usage:
                yield sse({**self.envelope([], chunk=True), "usage": _usage(job)})
            yield SSE_DONE

        return StreamFormat(
            SSE_CONTENT_TYPE, token, head, tail, error=_stream_error, early_headers=True
        )

    def full(self, job: Job, text: str) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            }
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": job.finish_reason, "stop_reason": None}
        answer = self.envelope([choice], chunk=False)
        if self.chat:
            answer |= {"service_tier": None, "system_fingerprint": None}
        else:
            choice["prompt_logprobs"] = None
        answer["usage"] = {**_usage(job), "prompt_tokens_details": None}
        if self.chat:
            answer["prompt_logprobs"] = None
        answer["kv_transfer_params"] = None
        return answer


async def _generate(request: web.Request, prompt_field: str) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await _read_body(request)
    if (faulted := await injected_fault(engine)) is not None:
        return faulted
    ask = _parse(request, body, prompt_field)
    chat = prompt_field == "messages"
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    reply = _Reply(chat, ask.served, rid, int(time.time()))
    async with _admit(request, ask) as job:
        fmt = reply.stream_format(job, ask.usage) if ask.stream else None
        return await respond(request, job, fmt, lambda text: json_response(reply.full(job, text)))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "messages")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "prompt")


async def embeddings(request: web.Request) -> web.StreamResponse:
    await _read_body(request)
    raise VllmError(400, "The model does not support Embeddings API", "BadRequestError")


async def health(request: web.Request) -> web.Response:
    dead = request.app[ENGINE].fault.mode == "error_500"
    return web.Response(status=503 if dead else 200)


async def version(request: web.Request) -> web.Response:
    return json_response({"version": request.app[CONFIG].version})


async def models(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    created = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    cards = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": config.models[0],
            "parent": None,
            "max_model_len": config.context_length,
            "permission": [permission],
        }
        for name in config.names
    ]
    return json_response({"object": "list", "data": cards})


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[METRICS]), headers={"Content-Type": content_type})


def attach(app: web.Application, engine: Engine) -> None:
    """vLLM's Prometheus registry, read from the engine at scrape time."""
    app[METRICS] = vllm_registry(engine, app[CONFIG].names[0])


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/health", health, allow_head=False)
    router.add_get("/ping", health, allow_head=False)
    router.add_post("/ping", health)
    router.add_get("/version", version, allow_head=False)
    router.add_get("/metrics", metrics, allow_head=False)
    router.add_get("/v1/models", models, allow_head=False)
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/completions", completions)
    router.add_post("/v1/embeddings", embeddings)
