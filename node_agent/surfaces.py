"""Anthropic Messages (``POST /v1/messages``) and OpenAI Responses (``POST /v1/responses``) on
the agent: passed through when the engine speaks them, translated to and from chat completions
(:mod:`node_agent.anthropic_chat`, :mod:`node_agent.responses_chat`) when it does not. This is
the one place where these surfaces are translated; the router only forwards them.

Which one, per path: TGI's API has neither surface, so it is translated; Triton answers 404 (its
generate extension has no roles or tools to translate to, and the router sends it none). Any
other engine is asked once, with a POST of an empty object: an engine that lacks the route
answers 404 or 405 (or, like LM Studio's catch-all, 200 to anything), so the surface is
translated; one that has it refuses the empty body (400 or 422; llama-server 500 for a Messages
body without messages), so it is passed through. No answer, or 502 to 504, settles nothing: the
request is translated and the engine asked again next time. What was learnt is kept for the
agent's life (an engine upgraded in place is seen once its agent restarts).

Passed through, an engine's error on the Messages path is rewritten into Anthropic's envelope
(llama-server answers in OpenAI's); its status stays (the router's failover reads it), as it does
for the agent's own errors there (:mod:`node_agent.errors`). Translated, the chat call is counted
in flight, observed and cancelled like any (:meth:`BackendProxy.opened`); the engine's error
before the answer keeps its status; once a stream has begun, a cut or an error is the surface's
error event, which ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import orjson
from aiohttp import web

from node_protocol.surface_errors import anthropic_envelope, anthropic_type

from . import anthropic_chat, responses_chat
from .anthropic_stream import AnthropicStream
from .appkeys import BACKEND, PROXY
from .backends.base import control_headers
from .chat_answer import CHAT_PATH, ChatDelta, answer_of, chat_deltas, refusal
from .errors import AgentError, BackendBadAnswer, BackendUnreachable, RouteNotServed
from .responses_stream import ResponsesStream
from .triton_ask import estimate_tokens

log = logging.getLogger("node_agent.surfaces")

MESSAGES_PATH = "/v1/messages"
RESPONSES_PATH = "/v1/responses"
NEVER_NATIVE = frozenset({"tgi", "triton"})  # their APIs have neither surface
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Writer(Protocol):
    """Writes a translated stream's events from the chat deltas."""

    @property
    def output_tokens(self) -> int: ...

    def start(self) -> bytes: ...

    def take(self, delta: ChatDelta) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, message: str) -> bytes: ...


class Ask(Protocol):
    @property
    def chat_body(self) -> bytes: ...

    @property
    def stream(self) -> bool: ...


AskT = TypeVar("AskT", bound=Ask)


@dataclass(frozen=True, slots=True)
class Translation(Generic[AskT]):
    """One surface: its path, its translation and how its engine's errors are shaped."""

    path: str
    translate: Callable[[bytes], AskT]
    whole: Callable[[AskT, ChatDelta], dict[str, Any]]
    writer: Callable[[AskT], Writer]
    error_body: Callable[[int, bytes], bytes] | None = None


def anthropic_error_body(status: int, raw: bytes) -> bytes:
    """An engine's error answer on the Messages path, in Anthropic's envelope."""
    with suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
        if isinstance(body, dict) and body.get("type") == "error":
            return raw
    message = refusal(status, raw).message
    return orjson.dumps(anthropic_envelope(message, anthropic_type(status)))


def _response_whole(ask: responses_chat.ResponsesAsk, answer: ChatDelta) -> dict[str, Any]:
    return responses_chat.whole(ask, answer, estimate_tokens(anthropic_chat.written(answer)))


MESSAGES = Translation(
    MESSAGES_PATH,
    anthropic_chat.translate,
    anthropic_chat.message,
    AnthropicStream,
    anthropic_error_body,
)
RESPONSES = Translation(RESPONSES_PATH, responses_chat.translate, _response_whole, ResponsesStream)


class NativeSurfaces:
    """Which surface paths the engine serves itself: asked once per path, the answer kept."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str | None, timeout_s: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = control_headers(api_key) | {"Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._known: dict[str, bool] = {}
        self._lock = asyncio.Lock()

    async def serves(self, path: str) -> bool:
        known = self._known.get(path)
        if known is not None:
            return known
        async with self._lock:  # one probe, however many requests arrive at once
            if path not in self._known:
                found = await self._probe(path)
                if found is None:
                    return False
                self._known[path] = found
                log.info("backend %s %s %s", self._base, "speaks" if found else "lacks", path)
        return self._known[path]

    async def _probe(self, path: str) -> bool | None:
        try:
            async with self._session.post(
                self._base + path, data=b"{}", headers=self._headers, timeout=self._timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("probe of %s%s failed: %r", self._base, path, exc)
            return None
        if status in (502, 503, 504):
            return None
        return status >= 400 and status not in (404, 405, 501)


SURFACES = web.AppKey("surfaces", NativeSurfaces)


async def _whole(request: web.Request, translation: Translation[AskT], ask: AskT) -> web.Response:
    async with request.app[PROXY].opened(request, CHAT_PATH, ask.chat_body) as upstream:
        raw = await upstream.read()
        if upstream.status != 200:
            upstream.finish(failed=False)
            raise refusal(upstream.status, raw)
        upstream.finish(failed=True)  # until the answer proves readable
        answer = translation.whole(ask, answer_of(raw))
        upstream.add_tokens(answer["usage"]["output_tokens"])
        upstream.finish(failed=False)
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def _streamed(
    request: web.Request, translation: Translation[AskT], ask: AskT
) -> web.StreamResponse:
    writer = translation.writer(ask)
    async with (
        request.app[PROXY].opened(request, CHAT_PATH, ask.chat_body) as upstream,
        aclosing(chat_deltas(upstream)) as deltas,
    ):
        if upstream.status != 200:
            raw = await upstream.read()
            upstream.finish(failed=False)
            raise refusal(upstream.status, raw)
        if not upstream.content_type.lower().startswith("text/event-stream"):
            raise BackendBadAnswer(f"a chat stream answered as {upstream.content_type!r}")
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        try:
            await resp.write(writer.start())
            async for delta in deltas:
                if events := writer.take(delta):
                    await resp.write(events)
            await resp.write(writer.finish())
            await resp.write_eof()
            upstream.add_tokens(writer.output_tokens)
            upstream.finish(failed=False)
        except ConnectionResetError:
            log.debug("client left %s mid-stream", request.path)
            upstream.client_gone()
        except AgentError as exc:  # stalled, dropped, garbled or failed after it began
            log.warning("translated stream on %s cut: %s", request.path, exc.message)
            upstream.add_tokens(writer.output_tokens)
            with suppress(ConnectionError):
                await resp.write(writer.error(exc.message))
                await resp.write_eof()
    return resp


async def _serve(request: web.Request, translation: Translation[AskT]) -> web.StreamResponse:
    kind = await request.app[BACKEND].resolved_kind()
    if kind is None:
        raise BackendUnreachable("backend unreachable (its kind is not known yet)")
    if kind == "triton":
        raise RouteNotServed(f"POST {translation.path}: Triton's generate extension has no chat")
    if kind not in NEVER_NATIVE and await request.app[SURFACES].serves(translation.path):
        return await request.app[PROXY].forward(
            request, translation.path, error_body=translation.error_body
        )
    ask = translation.translate(await request.read())
    if ask.stream:
        return await _streamed(request, translation, ask)
    return await _whole(request, translation, ask)


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    return await _serve(request, MESSAGES)


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``."""
    return await _serve(request, RESPONSES)


def add_surface_routes(app: web.Application) -> None:
    app.router.add_post(MESSAGES_PATH, messages)
    app.router.add_post(RESPONSES_PATH, responses)
