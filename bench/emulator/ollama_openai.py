"""Ollama's OpenAI-compatible face (``/v1/...``) with its quirks (backends.md §2.4).

Ids are ``chatcmpl-<0..998>`` / ``cmpl-<n>``, every chunk carries ``system_fingerprint:
"fp_ollama"`` and ``created`` of the first chunk, content chunks repeat ``role``, a dedicated
finish chunk has an empty delta, and errors are wrapped with ``param``/``code`` null.
``max_completion_tokens`` is not a field Ollama reads, so only ``max_tokens`` limits output.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .control import note
from .engine import Job
from .ollama_catalog import openai_model, resolve
from .ollama_errors import OllamaError, error_for, go_json_error, openai_error
from .ollama_face import admit, run_embedding, served_model
from .openai_fields import (
    FieldError,
    completion_prompt_tokens,
    embedding_inputs,
    message_prompt_tokens,
    optional_int,
    wants_stream,
    wants_usage,
)
from .streaming import SSE_DONE, StreamFormat, collect, injected_fault, json_response, relay, sse

SSE_CONTENT_TYPE = "text/event-stream"
FINGERPRINT = "fp_ollama"


async def _read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OllamaError(400, go_json_error(raw, exc.pos)) from exc
    if not isinstance(body, dict):
        raise OllamaError(400, "json: cannot unmarshal into Go value of type openai request")
    model = body.get("model")
    note(request, model if isinstance(model, str) else None, body.get("stream") is True)
    return body


async def _fault(request: web.Request) -> web.Response | None:
    return await injected_fault(request.app[ENGINE], lambda s, m: error_for(request, s, m))


def _usage(job: Job) -> dict[str, int]:
    total = job.prompt_tokens + job.generated
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.generated,
        "total_tokens": total,
    }


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    body = await _read_body(request)
    if chat and not body.get("messages"):
        raise OllamaError(400, "[] is too short - 'messages'")
    if (faulted := await _fault(request)) is not None:
        return faulted
    name = served_model(request, body)
    try:
        if chat:
            prompt = message_prompt_tokens(body["messages"])
        elif isinstance(body.get("prompt"), str):
            prompt = completion_prompt_tokens(body["prompt"])
        else:
            raise FieldError("prompt", "prompt must be a string")
        max_tokens = optional_int(body, "max_tokens")
        stream = wants_stream(body)
    except FieldError as exc:
        raise OllamaError(400, str(exc)) from exc
    rid = f"chatcmpl-{random.randrange(999)}" if chat else f"cmpl-{random.randrange(999)}"
    kind = "chat.completion" if chat else "text_completion"
    created = int(time.time())

    def envelope(choices: list[dict[str, Any]], suffix: str = ".chunk") -> dict[str, Any]:
        obj = kind + suffix if chat else kind
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": body["model"],
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def choice(text: str | None, finish: str | None) -> dict[str, Any]:
        if not chat:
            return {"text": text or "", "index": 0, "finish_reason": finish}
        delta = {} if text is None else {"role": "assistant", "content": text}
        return {"index": 0, "delta": delta, "finish_reason": finish}

    async with admit(request, name, prompt, max_tokens, None) as job:
        if stream:

            def token(index: int, text: str, _last: bool) -> bytes:
                nonlocal created
                if index == 0:
                    created = int(time.time())
                return sse(envelope([choice(text, None)]))

            def tail() -> Iterable[bytes]:
                yield sse(envelope([choice(None, job.finish_reason)]))
                if wants_usage(body):
                    yield sse({**envelope([]), "usage": _usage(job)})
                yield SSE_DONE

            return await relay(request, job, StreamFormat(SSE_CONTENT_TYPE, token, tail=tail))
        text = await collect(request, job, "application/json")
        if isinstance(text, web.StreamResponse):
            return text
        if chat:
            done = {"index": 0, "message": {"role": "assistant", "content": text}}
            done["finish_reason"] = job.finish_reason
        else:
            done = choice(text, job.finish_reason)
        answer = {**envelope([done], suffix=""), "usage": _usage(job)}
        return json_response(answer, newline=True)


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
