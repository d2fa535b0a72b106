"""Reading a request's JSON object body once, in each face's words for what is wrong with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from .control import note

SyntaxWords = Callable[[bytes, orjson.JSONDecodeError], Exception]
ShapeWords = Callable[[bytes], Exception]


async def json_object(
    request: web.Request,
    syntax: SyntaxWords,
    not_object: ShapeWords,
    empty: dict[str, Any] | Exception | None = None,
    stream_default: bool | None = False,
) -> dict[str, Any]:
    """The body as a JSON object; ``syntax(raw, error)`` / ``not_object(raw)`` give the
    exception to raise when it is not JSON / not an object. ``empty``: what a blank body is
    (an object to use, an exception to raise; None parses it, so it is a syntax error).
    The model and stream flag it names go to the request journal."""
    raw = await request.read()
    if empty is not None and not raw.strip():
        if isinstance(empty, Exception):
            raise empty
        return empty
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise syntax(raw, exc) from exc
    if not isinstance(body, dict):
        raise not_object(raw)
    model, stream = body.get("model"), body.get("stream")
    note(
        request,
        model if isinstance(model, str) else None,
        stream if isinstance(stream, bool) else stream_default,
    )
    return body
