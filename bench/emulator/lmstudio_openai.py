"""LM Studio's OpenAI-compatible routes (backends.md §6.4): chat, completions, embeddings.

A request for a downloaded model that is not loaded loads it first (JIT); ``ttl`` (seconds)
sets how long it stays loaded once idle, and loading a JIT model first unloads the previous
one (auto-evict). ``max_tokens: -1`` means no limit. Streams follow the llama.cpp family's
framing (:mod:`.openai_reply`) with ``logprobs: null`` and ``system_fingerprint`` = the model.
"""

from __future__ import annotations

import random
import string
from typing import Any

from aiohttp import web

from .appkeys import ENGINE
from .continuation import prompt_continues
from .errors import FaceError
from .lmstudio_face import load_error, read_body, resolve
from .openai_fields import (
    FieldError,
    embedding_inputs,
    read_generation,
)
from .openai_reply import OpenAIReply
from .residency import LoadFailed
from .streaming import injected_fault, json_response, respond, sse
from .tokens import embedding, prompt_tokens

SSE_CONTENT_TYPE = "text/event-stream"


def _ttl(body: dict[str, Any]) -> float | None:
    value = body.get("ttl")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaceError(400, "'ttl' must be a non-negative number of seconds")
    return float(value)


def _stream_error(exc: FaceError) -> list[bytes]:
    """Since 0.3.18 an error on a started stream is an OpenAI-shaped event."""
    error = {"message": exc.message, "type": exc.kind or "server_error", "param": None}
    return [sse({"error": {**error, "code": exc.code}})]


def _rid(prefix: str) -> str:
    return prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=26))


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    body = await read_body(request)
    name = resolve(request, body.get("model"))
    try:
        ask = read_generation(body, chat)
    except FieldError as exc:
        raise FaceError(400, str(exc), "invalid_request_error", exc.field) from exc
    max_tokens = ask.max_tokens
    if max_tokens is not None and max_tokens < 0:
        max_tokens = None  # -1: until the model stops
    ttl = _ttl(body)
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted
    reply = OpenAIReply(
        chat=chat,
        rid=_rid("chatcmpl-" if chat else "cmpl-"),
        model=name,
        fingerprint=name,
        logprobs=True,
    )
    first = 0 if chat else prompt_continues(body.get("prompt"))  # a new turn; a prompt goes on
    async with request.app[ENGINE].admit(name, ask.prompt_tokens, max_tokens, ttl, first) as job:

        def full(text: str) -> web.Response:
            return json_response({**reply.body(job, text), "stats": {}})

        fmt = None
        if ask.stream:
            fmt = reply.stream_format(job, SSE_CONTENT_TYPE, ask.usage, _stream_error)
        try:
            return await respond(request, job, fmt, full)
        except LoadFailed as exc:
            raise load_error(name, exc) from exc


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    name = resolve(request, body.get("model"))
    try:
        texts = embedding_inputs(body.get("input"))
    except FieldError as exc:
        raise FaceError(400, str(exc), "invalid_request_error", "input") from exc
    if (faulted := await injected_fault(request.app[ENGINE])) is not None:
        return faulted
    prompt = prompt_tokens(texts)
    async with request.app[ENGINE].admit(name, prompt, 0, _ttl(body)) as job:
        try:
            await job.run_to_end()
        except LoadFailed as exc:
            raise load_error(name, exc) from exc
    data = [
        {"object": "embedding", "embedding": embedding(t), "index": i} for i, t in enumerate(texts)
    ]
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return json_response({"object": "list", "data": data, "model": name, "usage": usage})


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/completions", completions)
    router.add_post("/v1/embeddings", embeddings)
