"""Ollama's error shapes: ``{"error": "..."}`` natively, the OpenAI envelope under ``/v1/``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .errors import FaceError, face_middleware
from .streaming import json_response

GIN_JSON = "application/json; charset=utf-8"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
_GIN_TEXT = {"Content-Type": "text/plain"}
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


class OllamaError(FaceError):
    """An error Ollama answers with ``status``; :data:`middleware` picks the shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)


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


def _render(request: web.Request, exc: FaceError) -> web.Response:
    return error_for(request, exc.status, exc.message)


def _unmatched(_request: web.Request, status: int) -> web.Response:
    """gin's plain-text answers for unknown routes and wrong methods."""
    body = b"404 page not found" if status == 404 else b"405 method not allowed"
    return web.Response(status=status, body=body, headers=_GIN_TEXT)


middleware = face_middleware(_render, _unmatched)
