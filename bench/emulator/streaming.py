"""Response framing shared by the faces: JSON bodies, SSE / NDJSON streams and fault effects.

:func:`respond` runs one generation to the wire, streamed (:func:`relay`) or whole
(:func:`collect`). Each face supplies a :class:`StreamFormat` saying what goes before the
first token, how a token is framed, what closes the stream and how an error is written once
the stream has begun.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .engine import Engine
from .errors import FaceError
from .faults import FAULT_MESSAGE
from .job import Job

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
SSE_DONE_TIGHT = b"data:[DONE]\n\n"  # TGI writes ``data:`` without the optional space
GARBAGE_BODY = b"<html><body><h1>emulated garbage</h1>not JSON</body></html>\n"


def json_response(
    obj: Any, status: int = 200, content_type: str = "application/json", newline: bool = False
) -> web.Response:
    body = orjson.dumps(obj) + (b"\n" if newline else b"")
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


def sse(obj: Any, *, space: bool = True) -> bytes:
    """One ``data:`` event; ``space=False`` writes TGI's ``data:{...}``."""
    return (b"data: " if space else b"data:") + orjson.dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _nothing() -> Iterable[bytes]:
    return ()


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How one face frames a streamed answer.

    ``early_headers``: send the status line before waiting for a slot (vLLM, TGI) rather than
    with the first token. ``token(index, text, is_last)`` frames one token; ``head`` is written
    just before the first token, ``tail`` after the last. ``error`` frames an error once the
    stream has begun (None: the face has no such event, so the connection is dropped).
    """

    content_type: str
    token: Callable[[int, str, bool], bytes]
    head: Callable[[], Iterable[bytes]] = _nothing
    tail: Callable[[], Iterable[bytes]] = _nothing
    error: Callable[[FaceError], Iterable[bytes]] | None = None
    early_headers: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self) -> web.StreamResponse:
        return web.StreamResponse(headers={"Content-Type": self.content_type, **self.headers})


async def respond(
    request: web.Request,
    job: Job,
    fmt: StreamFormat | None,
    full: Callable[[str], web.StreamResponse],
    content_type: str = "application/json",
) -> web.StreamResponse:
    """Stream the job with ``fmt``, or (``fmt`` None) run it and answer ``full(text)``."""
    if fmt is not None:
        return await relay(request, job, fmt)
    text = await collect(request, job, content_type)
    return text if isinstance(text, web.StreamResponse) else full(text)


async def relay(request: web.Request, job: Job, fmt: StreamFormat) -> web.StreamResponse:
    """Wait for a slot and stream the job's tokens; a gone client or an injected mid-stream
    fault ends it early."""
    fault = job.engine.fault
    cut_after = fault.cut_after()
    resp = fmt.response()

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
                if cut_after is not None and index >= cut_after:
                    await _cut(request, resp, job, fmt)
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


async def _cut(request: web.Request, resp: web.StreamResponse, job: Job, fmt: StreamFormat) -> None:
    """End a stream the way the active fault says: an error event, or a dropped connection."""
    if job.engine.fault.mode == "error_mid_stream" and fmt.error is not None:
        job.errored = True
        for chunk in fmt.error(FaceError(500, FAULT_MESSAGE)):
            await resp.write(chunk)
        await resp.write_eof()
    else:
        abort(request)


async def stream_error(
    request: web.Request, fmt: StreamFormat, exc: FaceError
) -> web.StreamResponse:
    """A 200 stream that carries only an error event (TGI answers overload this way)."""
    if fmt.error is None:
        raise exc
    resp = fmt.response()
    await resp.prepare(request)
    for chunk in fmt.error(exc):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def collect(request: web.Request, job: Job, content_type: str) -> str | web.StreamResponse:
    """Run the job to its end and return the text; under ``die_mid_stream`` return the
    response that was cut after its headers and the start of a body, under
    ``error_mid_stream`` raise the face's 500."""
    fault = job.engine.fault
    cut_after = fault.cut_after()
    await job.ready()
    parts: list[str] = []
    async with aclosing(job.tokens()) as tokens:
        async for text in tokens:
            if cut_after is not None and len(parts) >= cut_after:
                if fault.mode == "error_mid_stream":
                    job.errored = True
                    raise FaceError(500, FAULT_MESSAGE)
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


async def injected_fault(engine: Engine) -> web.Response | None:
    """Apply a fault set before the request: ``hang`` never returns, ``error_500`` raises the
    face's 500, ``garbage`` answers a 200 that is not JSON."""
    mode = engine.fault.mode
    if mode == "hang":
        await asyncio.Event().wait()
    if mode == "error_500":
        raise FaceError(500, FAULT_MESSAGE)
    if mode == "garbage":
        return web.Response(body=GARBAGE_BODY, headers={"Content-Type": "text/html"})
    return None
