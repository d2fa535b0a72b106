"""Relaying a backend's answer to the agent's client: its pieces as they come, its tokens
counted on the way, a cut stream ended in its own API's error shape, and an error answer
reshaped for the surface the client speaks."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from node_protocol.events import Surface
from node_protocol.upstream import UpstreamResponse

from .backend_answer import Track
from .framing import Framing, cut_event, framing_of
from .metrics import CLIENT_GONE
from .prompt_caches import Arrival
from .traffic import AnswerTokens, TrafficStats

log = logging.getLogger("node_agent.proxy")

# Response headers worth keeping; hop-by-hop ones (Transfer-Encoding, Connection) never are.
_PASS_BACK = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Cache-Control",
    "Retry-After",
    "X-Request-Id",
    "x-should-retry",
    # KServe v2 binary tensor data: where the JSON header ends in a binary answer.
    "Inference-Header-Content-Length",
    # TGI's timing and token headers on /generate.
    "x-compute-type",
    "x-compute-time",
    "x-compute-characters",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)

_PASS_BACK_KEYS = tuple((name, name.lower()) for name in _PASS_BACK)  # the client's are lower-case


async def relay_answer(
    request: web.Request,
    upstream: UpstreamResponse,
    track: Track,
    stats: TrafficStats,
    native: bool,
    surface: Surface,
    arrival: Arrival | None,
) -> tuple[web.StreamResponse, bool]:
    """Relay the answer; the flag is False when the backend stalled or dropped mid-answer.

    Pieces go out as they come; the last one goes with the end of the answer, in one write.
    The engine's prompt counts in it, if any, settle the prompt's ``arrival``.
    """
    found = upstream.headers
    headers = {name: found[key] for name, key in _PASS_BACK_KEYS if key in found}
    resp = web.StreamResponse(
        status=upstream.status, reason=upstream.reason or None, headers=headers
    )
    framing = framing_of(found.get("content-type", ""), native=native, surface=surface)
    tokens = None
    if upstream.status == 200:
        tokens = AnswerTokens(stats, surface, streamed=framing.streamed)
    await resp.prepare(request)
    last = b""
    try:
        while chunk := await upstream.readany():  # each wait bounded by the idle timeout
            if tokens is not None:
                tokens.take(chunk)
            last = chunk
            if upstream.finished:  # the last piece goes out with the end, in one write
                break
            await resp.write(chunk)
            if track.first_byte_s is None:
                track.first_byte_s = track.since_start()
        if track.first_byte_s is None and chunk:
            track.first_byte_s = track.since_start()
        if tokens is not None:
            tokens.end(_header_int(found, "x-generated-tokens"))
            if arrival is not None:
                arrival.settle(tokens.reader.prompt_tokens, tokens.reader.cached_tokens)
        await resp.write_eof(chunk)
    except ConnectionResetError:
        # The client went away (the handler is usually cancelled first; this is the case
        # where the write noticed it): stop the backend generating for nobody.
        log.debug("client left %s mid-response", request.path)
        track.status = CLIENT_GONE
        upstream.close()
        return resp, True
    except (TimeoutError, OSError) as exc:  # the backend's side: UpstreamBroken is one
        await _cut(request, resp, framing, last, exc)
        return resp, False
    return resp, True


async def _cut(
    request: web.Request,
    resp: web.StreamResponse,
    framing: Framing,
    last: bytes,
    exc: BaseException,
) -> None:
    """The backend stalled or dropped mid-answer: say so on a stream, else cut the body."""
    reason = "backend timed out" if isinstance(exc, TimeoutError) else "backend dropped"
    log.warning("%s mid-response on %s: %r", reason, request.path, exc)
    event = cut_event(framing, f"{reason} after the stream started", last)
    if event is not None:
        try:
            await resp.write(event)
            await resp.write_eof()
        except ConnectionError:
            pass
    elif request.transport is not None:
        # No way to signal an error inside a JSON body: end the connection early so the
        # client sees a truncated response rather than a complete-looking one.
        request.transport.close()


async def reshaped_error(
    upstream: UpstreamResponse, error_body: Callable[[int, bytes], bytes]
) -> web.Response:
    """An error answer with its body rewritten (what is read of it within the idle bound)."""
    try:
        raw = await upstream.read()
    except (OSError, TimeoutError):
        raw = b""
    return web.Response(
        status=upstream.status,
        body=error_body(upstream.status, raw),
        content_type="application/json",
    )


def _header_int(headers: dict[str, str], name: str) -> int | None:
    value = headers.get(name, "")
    return int(value) if value.isdigit() else None
