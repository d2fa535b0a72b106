"""How an Anthropic Messages or OpenAI Responses client is told of an error: the router and the
agent answer in the same shapes.

Anthropic: ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's types by status
(400 ``invalid_request_error``, 401 ``authentication_error``, 403 ``permission_error``, 404
``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error``, 500 ``api_error``, 504
``timeout_error``, 529 ``overloaded_error``); "no capacity", 503 elsewhere, is Anthropic's 529.
On a stream: ``event: error`` with that body.

Responses: plain answers use the OpenAI envelope; on a stream an ``error`` event,
``{"type": "error", "code", "message", "param"}``.
"""

from __future__ import annotations

from typing import Any

import orjson

ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529  # Anthropic's status for "overloaded, retry later"


def anthropic_status(status: int) -> int:
    """The status an Anthropic client gets for one of ours (503 is its 529)."""
    return OVERLOADED if status == 503 else status


def anthropic_type(status: int) -> str:
    """Anthropic's error type for a status (after :func:`anthropic_status`)."""
    found = ANTHROPIC_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_envelope(message: str, type_: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def anthropic_error_event(message: str, type_: str = "api_error") -> bytes:
    """The event that ends a Messages stream with an error (the SDK raises on it)."""
    return b"event: error\ndata: " + orjson.dumps(anthropic_envelope(message, type_)) + b"\n\n"


def responses_error_event(message: str, code: str) -> bytes:
    """The event that ends a Responses stream with an error."""
    event = {"type": "error", "code": code, "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
