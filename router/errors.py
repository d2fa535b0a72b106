"""The router's one error tree, and the single place that turns it into HTTP.

::

    RouterError                      500 internal_error
    ├── InvalidRequest               400 invalid_request_error
    ├── Unauthorized                 401 authentication_error
    ├── Forbidden                    403 permission_error
    ├── NotFound                     404 not_found_error
    │   └── ModelNotFound            404 not_found_error / model_not_found
    ├── RequestTimeout               408 invalid_request_error
    ├── PayloadTooLarge              413 invalid_request_error
    ├── RateLimited                  429 rate_limit_error (Retry-After)
    ├── UpstreamError                502 upstream_error
    ├── NoCapacity                   503 service_unavailable (Retry-After)
    └── UpstreamTimeout              504 upstream_timeout

Every error a client sees is in its surface's envelope: OpenAI's
``{"error": {"message", "type", "param", "code"}}``, or on the Anthropic Messages paths
Anthropic's ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's status (503 is
its 529 ``overloaded_error``). :func:`error_middleware` maps our errors, aiohttp's own
``HTTPException`` s (unknown path, wrong method, body too large) and anything unexpected (logged,
answered 500) onto them; the path alone says which envelope, so an error raised before any
handler ran (authentication, an unknown path) is in the right one too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import orjson
from aiohttp import web

from node_protocol.surface_errors import anthropic_envelope, anthropic_status, anthropic_type

log = logging.getLogger("router.errors")


class RouterError(Exception):
    """Base of every error the router answers a client with."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "authentication_error"


class Forbidden(RouterError):
    status = 403
    type = "permission_error"


class NotFound(RouterError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"


class UpstreamError(RouterError):
    status = 502
    type = "upstream_error"


class NoCapacity(RouterError):
    status = 503
    type = "service_unavailable"


class UpstreamTimeout(RouterError):
    status = 504
    type = "upstream_timeout"


def envelope(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def speaks_anthropic(path: str) -> bool:
    """Whether ``path`` is on the Anthropic Messages surface (``/{group}/v1/messages...``)."""
    return path.endswith("/v1/messages") or "/v1/messages/" in path


def _body(message: str, status: int, openai: dict[str, Any], anthropic: bool) -> tuple[int, bytes]:
    """(status, body) of an error in the surface's envelope."""
    if not anthropic:
        return status, orjson.dumps(openai)
    status = anthropic_status(status)
    return status, orjson.dumps(anthropic_envelope(message, anthropic_type(status)))


def error_response(err: RouterError, *, anthropic: bool = False) -> web.Response:
    """Our error as an answer: OpenAI's envelope, or Anthropic's (``anthropic``)."""
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    status, body = _body(err.message, err.status, err.envelope(), anthropic)
    response = web.Response(
        status=status, body=body, content_type="application/json", headers=headers
    )
    if err.status in (408, 413):
        response.force_close()  # the rest of the body will not be read: end the connection
    return response


_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _from_http_exception(exc: web.HTTPException, anthropic: bool) -> web.Response:
    status = exc.status
    if status == 413:
        message = "request body is too large"
    elif status == 404:
        message = (
            "no such path: see /{group}/v1/chat/completions, /{group}/v1/messages, "
            "/{group}/v1/responses, /{group}/v1/models"
        )
    elif status == 405:
        message = f"method not allowed here: {exc.reason}"
    else:
        message = exc.reason
    openai = envelope(message, _HTTP_TYPES.get(status, "internal_error"), None, None)
    status, body = _body(message, status, openai, anthropic)
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with its surface's envelope and the right status."""
    try:
        return await handler(request)
    except RouterError as err:
        return error_response(err, anthropic=speaks_anthropic(request.path))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, speaks_anthropic(request.path))
    except (ConnectionResetError, web.HTTPClientError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        internal = RouterError("internal router error")
        return error_response(internal, anthropic=speaks_anthropic(request.path))
