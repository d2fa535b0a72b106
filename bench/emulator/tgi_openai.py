"""TGI's OpenAI routes with their quirks (backends.md §4.5).

``model`` is optional and never refused: ``"tgi"``, absent or unknown ids (taken as LoRA
adapters that fall back to the base model) all answer as the served model. Every chunk has
``id: ""`` and repeats ``role``; the last token's chunk carries ``finish_reason``, a usage chunk
with ``choices: []`` follows when asked, then ``data:[DONE]`` — all written ``data:`` without a
space. An error once streaming has begun is ``{"error":{"message","http_status_code":422}}``.
``/v1/completions`` keeps TGI's own shape: ``finish_reason: ""`` until the last chunk, which
carries the native reason and the usage; ``suffix`` and more prompts than the client batch
size are refused; ``max_tokens`` defaults to 100. A chat with ``continue_final_message``
continues its final assistant message; a completions prompt is continued.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .appkeys import CONFIG
from .continuation import chat_continues, prompt_continues
from .errors import FaceError
from .job import Job
from .openai_fields import FieldError, message_prompt_tokens, usage_for, usage_of, wants_usage
from .streaming import SSE_DONE_TIGHT, StreamFormat, json_response, sse
from .tgi_face import (
    MAX_CLIENT_BATCH_SIZE,
    SSE_CONTENT_TYPE,
    deserialize_error,
    fingerprint,
    generation,
    int_field,
    native_finish,
    read_body,
)
from .tokens import prompt_tokens

COMPLETIONS_DEFAULT_MAX_TOKENS = 100


class _Shape:
    """The envelope every TGI OpenAI body shares."""

    def __init__(self, request: web.Request, kind: str) -> None:
        config = request.app[CONFIG]
        self.kind = kind
        self.model = config.models[0]
        self.fingerprint = fingerprint(config)

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "object": self.kind,
            "id": "",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            **extra,
        }


def _stream_error(exc: FaceError) -> Iterable[bytes]:
    message = exc.message if exc.kind else f"Request failed during generation: {exc.message}"
    yield sse({"error": {"message": message, "http_status_code": 422}}, space=False)
    yield SSE_DONE_TIGHT


def _stream(token: Any, tail: Any) -> StreamFormat:
    return StreamFormat(SSE_CONTENT_TYPE, token, tail=tail, error=_stream_error, early_headers=True)


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return int_field(value, "max_tokens")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, "messages")
    try:
        prompt = message_prompt_tokens(body["messages"])
    except FieldError as exc:
        raise deserialize_error(f"{exc} for `messages`") from exc
    max_new = _max_tokens(body)
    finish = "stop" if max_new is None else "length"
    shape = _Shape(request, "chat.completion.chunk")
    sent = 0

    def choice(text: str, finish: str | None, key: str = "delta") -> dict[str, Any]:
        content = {"role": "assistant", "content": text}
        return {"index": 0, key: content, "logprobs": None, "finish_reason": finish}

    def token(index: int, text: str, last: bool) -> bytes:
        nonlocal sent
        sent = index + 1
        return sse(shape.body([choice(text, finish if last else None)], usage=None), space=False)

    def tail() -> Iterable[bytes]:
        if wants_usage(body):
            yield sse(shape.body([], usage=usage_for(prompt, sent)), space=False)
        yield SSE_DONE_TIGHT

    def full(job: Job, text: str) -> web.Response:
        answer = shape.body([choice(text, finish, "message")], usage=usage_of(job))
        return json_response({**answer, "object": "chat.completion"})

    fmt = _stream(token, tail) if body.get("stream") is True else None
    first = chat_continues(body["messages"], body.get("continue_final_message") is True)
    return await generation(request, prompt, max_new, fmt, full, first)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, "prompt")
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise deserialize_error("invalid type: expected a string or a sequence of strings")
    if body.get("suffix") is not None:
        raise FaceError(
            422,
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "suffix not supported",
        )
    if len(prompts) > MAX_CLIENT_BATCH_SIZE:
        raise FaceError(
            422,
            f"Number of prompts exceeds the maximum allowed batch size of {MAX_CLIENT_BATCH_SIZE}",
            "batch size exceeded",
        )
    max_new = _max_tokens(body)
    max_new = COMPLETIONS_DEFAULT_MAX_TOKENS if max_new is None else max_new
    prompt = prompt_tokens(prompts)
    shape = _Shape(request, "text_completion")

    def choice(text: str, finish: str) -> dict[str, Any]:
        return {"finish_reason": finish, "index": 0, "logprobs": None, "text": text}

    def token(index: int, text: str, last: bool) -> bytes:
        if not last:
            return sse(shape.body([choice(text, "")]), space=False)
        usage = usage_for(prompt, index + 1)
        return sse(shape.body([choice(text, native_finish(max_new))], usage=usage), space=False)

    def full(job: Job, text: str) -> web.Response:
        return json_response(shape.body([choice(text, job.finish_reason)], usage=usage_of(job)))

    fmt = _stream(token, lambda: [SSE_DONE_TIGHT]) if body.get("stream") is True else None
    return await generation(request, prompt, max_new, fmt, full, prompt_continues(prompts))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
