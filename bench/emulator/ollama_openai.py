"""Ollama's OpenAI-compatible face (``/v1/...``) with its quirks (backends.md §2.4).

Ids are ``chatcmpl-<0..998>`` / ``cmpl-<n>``, every chunk carries ``system_fingerprint:
"fp_ollama"`` and ``created`` of the first chunk, content chunks repeat ``role``, a dedicated
finish chunk has an empty delta, and errors are wrapped with ``param``/``code`` null.
``max_completion_tokens`` is not a field Ollama reads, so only ``max_tokens`` limits output.
"""

from __future__ import annotations

import random
from typing import Any

from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .continuation import chat_continues
from .ollama_catalog import openai_model, resolve
from .ollama_errors import OllamaError, openai_error
from .ollama_face import admit, read_body, run_embedding, served_model
from .openai_fields import (
    FieldError,
    embedding_inputs,
    read_generation,
)
from .openai_reply import OpenAIReply
from .streaming import injected_fault, json_response, respond

SSE_CONTENT_TYPE = "text/event-stream"
FINGERPRINT = "fp_ollama"


async def _read_body(request: web.Request) -> dict[str, Any]:
    return await read_body(request, "openai")


async def _fault(request: web.Request) -> web.Response | None:
    return await injected_fault(request.app[ENGINE])


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    body = await _read_body(request)
    if chat and not body.get("messages"):
        raise OllamaError(400, "[] is too short - 'messages'")
    if (faulted := await _fault(request)) is not None:
        return faulted
    name = served_model(request, body)
    try:
        ask = read_generation(body, chat, text_prompt=True)
    except FieldError as exc:
        raise OllamaError(400, str(exc)) from exc
    reply = OpenAIReply(
        chat=chat,
        rid=f"{'chatcmpl' if chat else 'cmpl'}-{random.randrange(999)}",
        model=body["model"],
        fingerprint=FINGERPRINT,
        logprobs=False,
        created_on_first_token=True,
    )
    # Its chat route becomes /api/chat, which continues a final assistant message; its
    # completions route templates the prompt (a new turn).
    first = chat_continues(body.get("messages"), chat)
    async with admit(request, name, ask.prompt_tokens, ask.max_tokens, None, first) as job:

        def full(text: str) -> web.Response:
            return json_response(reply.body(job, text), newline=True)  # Go's encoder adds "\n"

        fmt = reply.stream_format(job, SSE_CONTENT_TYPE, ask.usage) if ask.stream else None
        return await respond(request, job, fmt, full)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request)
    if (faulted := await _fault(request)) is not None:
        return faulted
    name = served_model(request, body)
    try:
        texts = embedding_inputs(body.get("input"))
    except FieldError as exc:
        raise OllamaError(400, str(exc)) from exc
    vectors, job = await run_embedding(request, name, texts, None)
    data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens}
    answer = {"object": "list", "data": data, "model": body["model"], "usage": usage}
    return json_response(answer, newline=True)


async def models(request: web.Request) -> web.Response:
    created = int(request.app[ENGINE].started_unix)
    data = [openai_model(spec, created) for spec in request.app[CONFIG].specs]
    return json_response({"object": "list", "data": data}, newline=True)


async def model(request: web.Request) -> web.Response:
    requested = request.match_info["model"]
    config = request.app[CONFIG]
    name = resolve(config.models, requested)
    if name is None:
        return openai_error(404, f"model '{requested}' not found")
    spec = next(s for s in config.specs if s.name == name)
    return json_response(openai_model(spec, int(request.app[ENGINE].started_unix)), newline=True)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/completions", completions)
    router.add_post("/v1/embeddings", embeddings)
    router.add_get("/v1/models", models)
    router.add_get("/v1/models/{model:.+}", model)
