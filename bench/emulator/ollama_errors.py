"""Ollama's error shapes: ``{"error": "..."}`` natively, the OpenAI envelope under ``/v1/``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .streaming import json_response

GIN_JSON = "application/json; charset=utf-8"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
_GIN_TEXT = {"Content-Type": "text/plain"}
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


class OllamaError(Exception):
    """An error Ollama answers with ``status``; :func:`middleware` picks the shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def native_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status, GIN_JSON)


def openai_error(status: int, message: str) -> web.Response:
    """Ollama's OpenAI middleware's envelope (``param``/``code`` null; Go's encoder adds
    a newline)."""
    kind = _OPENAI_TYPES.get(status, "api_error")
    error: dict[str, Any] = {"message": message, "type": kind, "param": None, "code": None}
    return json_response({"error": error}, status, "application/json", newline=True)


def error_for(request: web.Request, status: int, message: str) -> web.Response:
    shape = openai_error if request.path.startswith("/v1/") else native_error
    return shape(status, message)


def go_json_error(raw: bytes, pos: int) -> str:
    """Roughly what Go's encoding/json says about a body that is not JSON (``pos``: where
    the parser stopped)."""
    text = raw.decode("utf-8", "replace")
    if pos >= len(text.rstrip()):
        return "unexpected EOF"
    return f"invalid character '{text[pos]}' looking for beginning of value"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OllamaError as exc:
        return error_for(request, exc.status, exc.message)
    except web.HTTPNotFound:
        return web.Response(status=404, body=b"404 page not found", headers=_GIN_TEXT)
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, body=b"405 method not allowed", headers=_GIN_TEXT)
