"""OpenAI chat and text completions on a Triton node, translated to Triton's generate extension.

Triton's HTTP port speaks KServe v2 only (its OpenAI frontend is a
separate process few deployments run), so when the backend is Triton the agent answers the
OpenAI routes itself:

===============================  ===========================================================
``POST /v1/chat/completions``    ``POST /v2/models/{m}/generate``, or ``generate_stream``
``POST /v1/completions``         when ``stream``; answered as ``chat.completion(.chunk)`` or
                                 ``text_completion`` objects
``GET /v1/models``               ``POST /v2/repository/index {"ready": true}`` as cards
``POST /v1/embeddings``          404: the generate extension has no embeddings
===============================  ===========================================================

Translation:

- ``messages`` → one ``text_input``, a role-tagged join: a line ``{role}: {content}`` per
  message (the text parts of a content list joined; other parts are a 400), then a last line
  ``assistant:`` so the model answers as the assistant. ``prompt`` (completions) is sent as is.
- ``max_completion_tokens`` (else ``max_tokens``), ``temperature``, ``top_p`` and ``stop`` →
  ``parameters``; Triton's parameters are scalars, so one stop string (several are a 400). Also
  ``stream`` and ``exclude_input_in_output: true`` (the vLLM backend's inputs: stream or not,
  generated text only). ``n`` other than 1 is a 400; other fields are ignored.
- ``usage``: Triton's ``num_input_tokens`` / ``num_output_tokens`` outputs when the model has
  them; else prompt tokens ceil(characters / 4), completion tokens the streamed pieces (one
  token each) or, for a whole answer, ceil(characters / 4) capped at ``max_tokens``.
- ``finish_reason``: Triton's ``finish_reason`` output when present; else ``length`` when the
  completion reached ``max_tokens``, ``stop`` otherwise.
- Streams: once Triton's first response is in (so an error before it is still a plain HTTP
  error), a chunk with the role, then a content chunk per ``text_output`` piece as it arrives,
  a finish chunk, a usage chunk with ``stream_options.include_usage``, and ``data: [DONE]``.
- Errors: Triton's ``{"error": "..."}`` with its status becomes the OpenAI envelope with that
  status (:class:`~node_agent.errors.BackendRefused`); an error event, a stall or a drop after
  the stream started becomes an OpenAI SSE error event, which ends the stream.

In-flight counting, header renaming and cancellation are the proxy's
(:meth:`~node_agent.proxy.BackendProxy.opened`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

import orjson
from aiohttp import web

from node_protocol.wire import STREAM_CUT_CODE

from .appkeys import BACKEND, PROXY
from .errors import (
    AgentError,
    BackendBadAnswer,
    BackendRefused,
    RouteNotServed,
    envelope,
)
from .proxy import Upstream
from .triton_ask import Ask, Tally

log = logging.getLogger("node_agent.triton_openai")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
EMBEDDINGS_PATH = "/v1/embeddings"
OWNED_BY = "Triton Inference Server"  # as Triton's own OpenAI frontend says
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Reply:
    """The OpenAI objects of one answer (the same ``id`` and ``created`` on every chunk)."""

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.id = f"{'chatcmpl' if ask.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.ask.model}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.ask.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": finish}
        obj = "chat.completion" if self.ask.chat else "text_completion"
        return self._head(obj) | {"choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish: str | None = None, *, role: bool = False) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.ask.chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        choice |= {"logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk" if self.ask.chat else "text_completion"
        event = self._head(obj) | {"choices": [choice]}
        if self.ask.include_usage:
            event["usage"] = None
        return _sse(event)

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        obj = "chat.completion.chunk" if self.ask.chat else "text_completion"
        return _sse(self._head(obj) | {"choices": [], "usage": usage})


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def error_event(message: str, code: str | None) -> bytes:
    """An OpenAI SSE error event (the SDK raises on a ``data:`` with a top-level ``error``)."""
    return b"data: " + envelope(message, "api_error", code) + b"\n\n"


def refusal(status: int, raw: bytes) -> AgentError:
    """A Triton error answer (``{"error": "..."}``) as the error the client sees."""
    message = raw[:500].decode(errors="replace").strip()
    with suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            message = error
    message = message or f"Triton answered {status}"
    if status < 400:
        return BackendBadAnswer(f"Triton answered {status}: {message}")
    return BackendRefused(status, message)


def _event_error(event: dict[str, Any]) -> str | None:
    error = event.get("error")
    if error is None:
        return None
    return error if isinstance(error, str) and error else "Triton reported an error mid-stream"


async def sse_events(upstream: Upstream) -> AsyncGenerator[dict[str, Any], None]:
    """Triton's ``data: {json}`` events as they arrive (no ``[DONE]``: the stream just ends)."""
    data: list[bytes] = []
    while True:
        line = await upstream.readline()
        stripped = line.rstrip(b"\r\n")
        if stripped.startswith(b"data:"):
            data.append(stripped[5:].removeprefix(b" "))
        elif not stripped and data:  # a blank line (or the end) completes the event
            payload = b"\n".join(data)
            data = []
            if payload.strip() != b"[DONE]":
                yield _decode_event(payload)
        if not line:
            return


def _decode_event(payload: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BackendBadAnswer("Triton sent a stream event that is not JSON") from exc
    if not isinstance(event, dict):
        raise BackendBadAnswer("Triton sent a stream event that is not a JSON object")
    return event


async def _whole(request: web.Request, ask: Ask) -> web.Response:
    reply = Reply(ask)
    async with request.app[PROXY].opened(request, ask.path, ask.body()) as upstream:
        raw = await upstream.read()
        if upstream.status != 200:
            upstream.finish(failed=False)
            raise refusal(upstream.status, raw)
        upstream.finish(failed=True)  # until the answer proves readable
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BackendBadAnswer("Triton's generate answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise BackendBadAnswer("Triton's generate answer is not a JSON object")
        tally = Tally()
        text = tally.note(answer)
        usage, finish = tally.settle(ask, streamed=False)
        upstream.add_tokens(usage["completion_tokens"])
        upstream.finish(failed=False)
    return web.json_response(reply.whole(text, finish, usage), dumps=_dumps)


async def _streamed(request: web.Request, ask: Ask) -> web.StreamResponse:
    reply = Reply(ask)
    async with (
        request.app[PROXY].opened(request, ask.path, ask.body()) as upstream,
        aclosing(sse_events(upstream)) as events,
    ):
        if upstream.status != 200:
            raw = await upstream.read()
            upstream.finish(failed=False)
            raise refusal(upstream.status, raw)
        if not upstream.content_type.lower().startswith("text/event-stream"):
            raise BackendBadAnswer(f"Triton's generate_stream answered {upstream.content_type!r}")
        # Nothing is sent before Triton's first response: until then an error is a plain one.
        first = await anext(events, None)
        if first is None:
            raise BackendBadAnswer("Triton's stream ended without a response")
        if (error := _event_error(first)) is not None:
            raise BackendRefused(500, error)
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        tally = Tally()
        try:
            if ask.chat:
                await resp.write(reply.chunk("", role=True))
            event: dict[str, Any] | None = first
            while event is not None:
                if (error := _event_error(event)) is not None:
                    log.warning("Triton failed %s mid-stream: %s", ask.model, error)
                    await resp.write(error_event(error, "backend_error"))
                    await resp.write_eof()
                    return resp  # track stays failed
                piece = tally.note(event)
                if piece:
                    await resp.write(reply.chunk(piece))
                    upstream.add_tokens(1)
                event = await anext(events, None)
            usage, finish = tally.settle(ask, streamed=True)
            await resp.write(reply.chunk(None, finish))
            if ask.include_usage:
                await resp.write(reply.usage_chunk(usage))
            await resp.write(_DONE)
            await resp.write_eof()
            upstream.finish(failed=False)
        except ConnectionResetError:
            log.debug("client left %s mid-stream", request.path)
            upstream.client_gone()
        except AgentError as exc:  # stalled, dropped or garbled after the stream started
            log.warning("Triton stream for %s cut: %s", ask.model, exc.message)
            with suppress(ConnectionError):  # the cut's code: the router ends or resumes it
                await resp.write(error_event(exc.message, STREAM_CUT_CODE))
                await resp.write_eof()
    return resp


async def _completion(request: web.Request, *, chat: bool) -> web.StreamResponse:
    ask = Ask.from_body(await request.read(), chat=chat)
    return await (_streamed(request, ask) if ask.stream else _whole(request, ask))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` on Triton."""
    return await _completion(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions`` on Triton."""
    return await _completion(request, chat=False)


async def models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` on Triton: the READY models of the repository, as OpenAI cards."""
    exchange = await request.app[PROXY].exchange(request, "/v2/repository/index", b'{"ready":true}')
    if exchange.status != 200:
        raise refusal(exchange.status, exchange.body)
    try:
        index = orjson.loads(exchange.body)
    except orjson.JSONDecodeError as exc:
        raise BackendBadAnswer("Triton's repository index is not JSON") from exc
    if not isinstance(index, list):
        raise BackendBadAnswer("Triton's repository index is not a list")
    names = dict.fromkeys(
        e["name"]
        for e in index
        if isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("state") == "READY"
    )
    created = int(time.time())
    cards = [
        {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY} for name in names
    ]
    return web.json_response({"object": "list", "data": cards}, dumps=_dumps)


async def embeddings(request: web.Request) -> web.StreamResponse:
    raise RouteNotServed("embeddings: Triton's generate extension has none")


TRANSLATED: dict[str, Handler] = {
    CHAT_PATH: chat_completions,
    COMPLETIONS_PATH: completions,
    MODELS_PATH: models,
    EMBEDDINGS_PATH: embeddings,
}


async def serve_openai(request: web.Request, path: str) -> web.StreamResponse:
    """An OpenAI route: translated when the backend is Triton, else relayed as it is."""
    handler = TRANSLATED.get(path)
    if handler is not None and await request.app[BACKEND].resolved_kind() == "triton":
        return await handler(request)
    return await request.app[PROXY].forward(request, path)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
