"""Ollama's native API, as the emulator speaks it (backends.md §2).

Streams are NDJSON whose headers go out with the first token (after any model load), closed by
a ``done: true`` object with nanosecond durations. A request with no messages / prompt loads the
model (``done_reason: "load"``), or unloads it with ``keep_alive: 0`` (``"unload"``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .appkeys import CONFIG, ENGINE
from .continuation import chat_continues, prompt_continues
from .engine import EngineBusy
from .errors import FaceError
from .gotime import keep_alive_seconds, rfc3339
from .job import Job
from .ollama_catalog import ps_entries, resolve, tag_entry
from .ollama_errors import BUSY_MESSAGE, GIN_JSON, OllamaError, go_json_error
from .openai_fields import FieldError, embedding_inputs, message_prompt_tokens
from .request_body import json_object
from .streaming import StreamFormat, injected_fault, json_response, ndjson, respond
from .tokens import embedding, prompt_tokens, token_id

NDJSON_CONTENT_TYPE = "application/x-ndjson"


async def read_body(request: web.Request, api: str = "api") -> dict[str, Any]:
    """The body in Go's words; the native API (``api``) refuses an empty body, streams by
    default and says ``api request``, the OpenAI face says ``openai request``."""
    native = api == "api"
    return await json_object(
        request,
        lambda raw, exc: OllamaError(400, go_json_error(raw, exc.pos)),
        lambda _raw: OllamaError(
            400, f"json: cannot unmarshal into Go value of type {api} request"
        ),
        empty=OllamaError(400, "missing request body") if native else None,
        stream_default=None if native else False,
    )


def served_model(request: web.Request, body: dict[str, Any]) -> str:
    """The served model the body names; 400 when absent, 404 when unknown."""
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise OllamaError(400, "model is required")
    name = resolve(request.app[CONFIG].models, requested)
    if name is None:
        raise OllamaError(404, f"model '{requested}' not found")
    return name


def admit(
    request: web.Request,
    name: str,
    prompt: int,
    max_tokens: int | None,
    keep_alive: float | None,
    continues: int = 0,
) -> Job:
    try:
        return request.app[ENGINE].admit(name, prompt, max_tokens, keep_alive, continues)
    except EngineBusy as exc:
        raise OllamaError(503, BUSY_MESSAGE) from exc


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def timings(job: Job) -> dict[str, int]:
    """The final object's counts and nanosecond durations (zero ones left out, as Go's
    ``omitempty`` does)."""
    now = time.monotonic()
    slot = job.slot_at or now
    first = job.first_token_at or now
    last = job.last_token_at or first
    n = job.generated
    # The first token comes out of the prefill; count one decode step of it as eval time so
    # that eval_count / eval_duration is the decode rate, as Ollama's clients compute it.
    step = min((last - first) / (n - 1) if n > 1 else first - slot, first - slot)
    fields = {
        "total_duration": _ns(now - job.admitted_at),
        "load_duration": max(1, _ns(job.load_s)),
        "prompt_eval_count": job.prompt_tokens,
        "prompt_eval_duration": _ns(first - slot - step),
        "eval_count": n,
        "eval_duration": _ns(last - first + step) if n else 0,
    }
    return {k: v for k, v in fields.items() if v}


def _keep_alive(body: dict[str, Any]) -> float | None:
    try:
        return keep_alive_seconds(body.get("keep_alive"))
    except ValueError as exc:
        raise OllamaError(400, str(exc)) from exc


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    value = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None  # absent, or negative (until the model stops)


def _stream(body: dict[str, Any]) -> bool:
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise OllamaError(400, "json: cannot unmarshal into Go struct field stream of type bool")
    return value


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await read_body(request)
    if (faulted := await injected_fault(engine)) is not None:
        return faulted
    name = served_model(request, body)
    requested: str = body["model"]
    keep_alive = _keep_alive(body)
    stream = _stream(body)

    def reply(piece: str, **extra: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"model": requested, "created_at": rfc3339(time.time())}
        if chat:
            head["message"] = {"role": "assistant", "content": piece}
            if extra.get("done"):
                head["done_reason"] = extra.pop("done_reason")
        else:
            head["response"] = piece
        return {**head, **extra}

    if not body.get("messages" if chat else "prompt"):
        if keep_alive == 0:
            engine.unload(name)
            return json_response(reply("", done=True, done_reason="unload"), 200, GIN_JSON)
        await engine.preload(name, keep_alive)
        return json_response(reply("", done=True, done_reason="load"), 200, GIN_JSON)
    if chat:
        try:
            prompt = message_prompt_tokens(body["messages"])
        except FieldError as exc:
            raise OllamaError(400, str(exc)) from exc
        # A final assistant message is left open by the templates: the model continues it.
        first = chat_continues(body["messages"], True)
    else:
        prompt = prompt_tokens([str(body["prompt"])])
        first = prompt_continues(body["prompt"]) if body.get("raw") is True else 0

    async with admit(request, name, prompt, _num_predict(body), keep_alive, first) as job:

        def final(text: str) -> dict[str, Any]:
            extra: dict[str, Any] = {"done": True, "done_reason": job.finish_reason}
            if not chat:
                output = [token_id(job.first + i) for i in range(job.generated)]
                ids = list(range(1, prompt + 1)) + output
                extra["context"] = ids
            return reply(text, **extra, **timings(job))

        fmt = StreamFormat(
            NDJSON_CONTENT_TYPE,
            token=lambda _i, text, _last: ndjson(reply(text, done=False)),
            tail=lambda: [ndjson(final(""))],
            error=_stream_error,
        )
        return await respond(
            request,
            job,
            fmt if stream else None,
            lambda text: json_response(final(text), 200, GIN_JSON),
            GIN_JSON,
        )


def _stream_error(exc: FaceError) -> list[bytes]:
    """Once the NDJSON stream has begun, an error is its last line."""
    return [ndjson({"error": exc.message})]


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def run_embedding(
    request: web.Request, name: str, texts: list[str], keep_alive: float | None
) -> tuple[list[list[float]], Job]:
    """Load the model, take a slot for the prefill, and return one vector per text."""
    async with admit(request, name, prompt_tokens(texts), 0, keep_alive) as job:
        await job.run_to_end()
    return [embedding(t) for t in texts], job


async def embed(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await read_body(request)
    if (faulted := await injected_fault(engine)) is not None:
        return faulted
    name = served_model(request, body)
    if not body.get("input"):
        return json_response({"model": body["model"], "embeddings": []}, 200, GIN_JSON)
    try:
        texts = embedding_inputs(body["input"])
    except FieldError as exc:
        raise OllamaError(400, "invalid input type") from exc
    vectors, job = await run_embedding(request, name, texts, _keep_alive(body))
    answer = {"model": body["model"], "embeddings": vectors}
    answer |= {k: v for k, v in timings(job).items() if k in _EMBED_TIMINGS}
    return json_response(answer, 200, GIN_JSON)


_EMBED_TIMINGS = ("total_duration", "load_duration", "prompt_eval_count")


async def root(_request: web.Request) -> web.Response:
    return web.Response(
        body=b"Ollama is running", headers={"Content-Type": "text/plain; charset=utf-8"}
    )


async def version(request: web.Request) -> web.Response:
    return json_response({"version": request.app[CONFIG].version}, 200, GIN_JSON)


async def tags(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    modified = request.app[ENGINE].started_unix
    models = [tag_entry(spec, modified) for spec in config.specs]
    return json_response({"models": models}, 200, GIN_JSON)


async def ps(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    models = ps_entries(engine.models.values(), engine.config.context_length)
    return json_response({"models": models}, 200, GIN_JSON)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", root)
    router.add_get("/api/version", version)
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", ps)
    router.add_post("/api/chat", chat)
    router.add_post("/api/generate", generate)
    router.add_post("/api/embed", embed)
