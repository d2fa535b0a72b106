"""Errors a client of the agent can see, mapped to HTTP here: in the OpenAI envelope, or on the
Anthropic Messages path in Anthropic's (with the same status: the router reads it).

::

    AgentError                    (status, type, code)
    ├── BackendUnreachable        502 api_error   backend_unreachable
    ├── BackendBadAnswer          502 api_error   backend_bad_answer
    ├── BackendTimeout            504 api_error   backend_timeout
    ├── BackendRefused            the backend's 4xx/5xx (OpenAI on Triton: its own errors)
    │                             4xx invalid_request_error, 5xx api_error; code by status
    ├── BadRequest                400 invalid_request_error bad_request
    ├── RouteNotServed            404 invalid_request_error not_found
    └── SlotsTaken                  503 api_error   node_busy (with ``X-Node-Busy``)

aiohttp's own ``HTTPException`` s (404 unknown route, 405, 413 body too large) are rewritten
into the same envelope by :func:`error_middleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from node_protocol.surface_errors import anthropic_envelope, anthropic_type
from node_protocol.wire import NODE_BUSY_HEADER

log = logging.getLogger("node_agent.errors")


class AgentError(Exception):
    """An error with an HTTP status and an OpenAI error type and code."""

    status = 500
    type = "api_error"
    code: str | None = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}  # sent with the error answer


class BackendUnreachable(AgentError):
    """The backend refused or dropped the connection before answering."""

    status = 502
    code = "backend_unreachable"


class BackendBadAnswer(AgentError):
    """The backend answered 200 with a body the agent cannot read."""

    status = 502
    code = "backend_bad_answer"


class BackendTimeout(AgentError):
    """The backend did not answer within the first-byte timeout."""

    status = 504
    code = "backend_timeout"


_REFUSAL_CODES = {
    400: "bad_request",
    404: "model_not_found",
    429: "rate_limit_exceeded",
    500: "backend_error",
    501: "not_implemented",
    503: "backend_unavailable",
}


class BackendRefused(AgentError):
    """The backend answered with an error in its own shape: its status kept, its message shown.

    Only for routes the agent translates (the relayed ones pass the backend's body on as is).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "api_error"
        self.code = _REFUSAL_CODES.get(status, f"backend_{status}")


class BadRequest(AgentError):
    """The request cannot be forwarded as sent."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class RouteNotServed(AgentError):
    """A native route of a backend kind other than the one beside this agent."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class SlotsTaken(AgentError):
    """A router's slot check found every slot of the request's model taken: the request was
    not forwarded.

    ``X-Node-Busy`` carries the agent's in-flight count, all models together, as its reports
    do (``node_protocol.wire.NODE_BUSY_HEADER``).
    """

    status = 503
    code = "node_busy"

    def __init__(self, model_in_flight: int, slots: int, in_flight: int) -> None:
        super().__init__(
            f"node busy: {model_in_flight} requests for the model in flight, {slots} slots"
        )
        self.headers[NODE_BUSY_HEADER] = str(in_flight)


def envelope(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


ANTHROPIC_PATH = "/v1/messages"


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    *,
    anthropic: bool = False,
) -> web.Response:
    """The error answer: OpenAI's envelope, or Anthropic's (``anthropic``)."""
    if anthropic:
        body = orjson.dumps(anthropic_envelope(message, anthropic_type(status)))
    else:
        body = envelope(message, type_, code)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Write every error in the path's envelope with the right status."""
    anthropic = request.path == ANTHROPIC_PATH
    try:
        return await handler(request)
    except AgentError as exc:
        return error_response(
            exc.status, exc.message, exc.type, exc.code, exc.headers, anthropic=anthropic
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_ = "invalid_request_error" if exc.status < 500 else "api_error"
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        resp = error_response(exc.status, message, type_, code, anthropic=anthropic)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; anything else is a :class:`BadRequest`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
