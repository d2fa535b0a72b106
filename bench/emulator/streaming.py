"""Response framing shared by the faces: JSON bodies, SSE / NDJSON streams and fault effects.

:func:`relay` drives one generation onto the wire. Each face supplies a :class:`StreamFormat`
saying what goes before the first token, how a token is framed and what closes the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .engine import Engine, Job

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
GARBAGE_BODY = b"<html><body><h1>emulated garbage</h1>not JSON</body></html>\n"


def json_response(
    obj: Any, status: int = 200, content_type: str = "application/json", newline: bool = False
) -> web.Response:
    body = orjson.dumps(obj) + (b"\n" if newline else b"")
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How one face frames a streamed answer.

    ``early_headers``: send the status line before waiting for a slot (vLLM) rather than with
    the first token (Ollama). ``token(index, text, is_last)`` frames one token; ``head`` is
    written just before the first token, ``tail`` after the last.
    """

    content_type: str
    token: Callable[[int, str, bool], bytes]
    head: Callable[[], Iterable[bytes]] = tuple
    tail: Callable[[], Iterable[bytes]] = tuple
    early_headers: bool = False


async def relay(request: web.Request, job: Job, fmt: StreamFormat) -> web.StreamResponse:
    """Wait for a slot and stream the job's tokens; a gone client or an injected
    ``die_mid_stream`` ends it early."""
    engine: Engine = job.engine
    fault = engine.fault
    die_after = fault.after if fault.mode == "die_mid_stream" else None
    resp = web.StreamResponse(headers={"Content-Type": fmt.content_type})

    async def begin() -> None:
        if not resp.prepared:
            await resp.prepare(request)
        for chunk in fmt.head():
            await resp.write(chunk)

    try:
        if fmt.early_headers:
            await resp.prepare(request)
        await job.ready()
        last = job.output_tokens - 1
        index = 0
        async with aclosing(job.tokens()) as tokens:
            async for text in tokens:
                if index == 0:
                    await begin()
                if die_after is not None and index >= die_after:
                    abort(request)
                    return resp
                await resp.write(fmt.token(index, text, index == last))
                index += 1
        if index == 0:
            await begin()
        for chunk in fmt.tail():
            await resp.write(chunk)
    except ConnectionResetError:
        log.debug("client left %s mid-stream", request.path)
    return resp


async def collect(request: web.Request, job: Job, content_type: str) -> str | web.StreamResponse:
    """Run the job to its end and return the text; under ``die_mid_stream`` return the
    response that was cut after its headers and the start of a body."""
    fault = job.engine.fault
    die_after = fault.after if fault.mode == "die_mid_stream" else None
    await job.ready()
    parts: list[str] = []
    async with aclosing(job.tokens()) as tokens:
        async for text in tokens:
            if die_after is not None and len(parts) >= die_after:
                resp = web.StreamResponse(headers={"Content-Type": content_type})
                await resp.prepare(request)
                await resp.write(b'{"id":')
                abort(request)
                return resp
            parts.append(text)
    return "".join(parts)


def abort(request: web.Request) -> None:
    """Drop the connection without finishing the response."""
    if request.transport is not None:
        request.transport.abort()


async def injected_fault(
    engine: Engine, error: Callable[[int, str], web.Response]
) -> web.Response | None:
    """The response a fault set before the request gives, if any (``hang`` never returns)."""
    mode = engine.fault.mode
    if mode == "hang":
        await asyncio.Event().wait()
    if mode == "error_500":
        return error(500, "emulated fault: the backend failed")
    if mode == "garbage":
        return web.Response(body=GARBAGE_BODY, headers={"Content-Type": "text/html"})
    return None
