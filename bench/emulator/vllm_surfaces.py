"""vLLM's Anthropic Messages (``POST /v1/messages``) and OpenAI Responses (``POST /v1/responses``)
routes, as the emulator speaks them (vLLM serves both beside chat).

A body that is not what the route needs is a 400: on Messages in Anthropic's envelope
(``{"type": "error", "error": {"type", "message"}}``, as vLLM translates its errors there), on
Responses in vLLM's OpenAI envelope. ``previous_response_id`` is refused (vLLM keeps responses
only when told to store them, which the emulator never is). Answers:
:mod:`bench.emulator.surface_replies`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .engine import EngineBusy
from .job import Job
from .openai_fields import FieldError, optional_int, wants_stream
from .request_body import json_object
from .streaming import injected_fault, json_response, respond
from .surface_replies import (
    MessagesReply,
    ResponsesReply,
    messages_prompt_tokens,
    responses_prompt_tokens,
)
from .vllm_face import VllmError

MESSAGES_PATH = "/v1/messages"


def _bad(message: str) -> VllmError:
    return VllmError(400, message, "BadRequestError")


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(
        request,
        lambda _raw, exc: _bad(f"JSON decode error: {exc}"),
        lambda _raw: _bad("Input should be a valid dictionary"),
    )


def _served(request: web.Request, body: dict[str, Any]) -> str:
    config = request.app[CONFIG]
    model = body.get("model")
    if model is not None and model not in config.names:
        raise VllmError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    return model if isinstance(model, str) else config.names[0]


def _admit(request: web.Request, prompt: int, max_tokens: int | None) -> Job:
    engine = request.app[ENGINE]
    limit = engine.config.context_length
    if prompt + (max_tokens or 0) > limit:
        raise _bad(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + (max_tokens or 0)} tokens."
        )
    try:
        return engine.admit(engine.config.models[0], prompt, max_tokens)
    except EngineBusy as exc:
        raise VllmError(
            503, "The server is overloaded: the waiting queue is full.", "ServiceUnavailableError"
        ) from exc


async def messages(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted
    served = _served(request, body)
    try:
        if "max_tokens" not in body:
            raise FieldError("max_tokens", "max_tokens: Field required")
        max_tokens = optional_int(body, "max_tokens")
        prompt = messages_prompt_tokens(body)
        stream = wants_stream(body)
    except FieldError as exc:
        raise _bad(str(exc)) from exc
    reply = MessagesReply(served)
    async with _admit(request, prompt, max_tokens) as job:
        fmt = reply.stream_format(job) if stream else None
        return await respond(request, job, fmt, lambda text: json_response(reply.body(job, text)))


async def responses(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted
    served = _served(request, body)
    if body.get("previous_response_id") is not None:
        raise _bad("previous_response_id is set but the response store is disabled")
    try:
        max_tokens = optional_int(body, "max_output_tokens")
        prompt = responses_prompt_tokens(body)
        stream = wants_stream(body)
    except FieldError as exc:
        raise _bad(str(exc)) from exc
    reply = ResponsesReply(served, max_tokens)
    async with _admit(request, prompt, max_tokens) as job:
        fmt = reply.stream_format(job) if stream else None
        full = lambda text: json_response(reply.response(job, text))  # noqa: E731
        return await respond(request, job, fmt, full)


def add_routes(app: web.Application) -> None:
    app.router.add_post(MESSAGES_PATH, messages)
    app.router.add_post("/v1/responses", responses)
