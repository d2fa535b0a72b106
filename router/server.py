"""The router's HTTP server: aiohttp's, with protocol-level errors in the OpenAI envelope.

aiohttp answers requests it cannot parse (a bad request line, oversize or too many headers,
broken chunked framing) itself, before any middleware runs, in plain text. The router's clients
expect the OpenAI envelope for every error, so its connections (see :mod:`router.client_socket`)
write one: oversize headers get 431, an over-long URL 414, other malformed requests 400; and a
client that has not sent its first headers in time gets 408 and is disconnected (slowloris).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from router.client_socket import HookedRunner
from router.errors import envelope

log = logging.getLogger("router.server")


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps(envelope(message, "invalid_request_error"))
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _is_request_target(exc: LineTooLong) -> bool:
    """Whether the over-long line was the request line's URL (aiohttp passes the line read)."""
    line = exc.args[0] if exc.args else b""
    text = line.decode("latin-1") if isinstance(line, bytes | bytearray) else str(line)
    return text.startswith(("/", "http://", "https://")) or "Status line" in str(exc.args)


class EnvelopeErrors:
    """Protocol errors answered in the OpenAI envelope (a :class:`ConnectionPolicy`)."""

    def __init__(self, header_timeout_s: float) -> None:
        self.header_timeout_s = header_timeout_s

    def headers_too_slow(self) -> bytes:
        message = f"request headers not received within {self.header_timeout_s:g}s"
        return _raw_error(408, "Request Timeout", message)

    def error_response(
        self, request: web.BaseRequest, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong) and _is_request_target(exc):
            status, kind, text = 414, "invalid_request_error", "request URI is too long"
        elif isinstance(exc, LineTooLong) or "Too many headers" in (message or ""):
            status, kind, text = 431, "invalid_request_error", "request headers are too large"
        elif status < 500 or isinstance(exc, BadHttpMessage):
            status = status if 400 <= status < 500 else 400
            kind, text = "invalid_request_error", f"malformed HTTP request: {message or exc}"
        else:
            log.error("error handling a request", exc_info=exc)
            kind, text = "internal_error", "internal router error"
        log.debug("protocol error %s from %s: %s", status, request.remote, text)
        return web.Response(
            status=status,
            body=orjson.dumps(envelope(text[:300], kind)),
            content_type="application/json",
        )


class RouterRunner(HookedRunner):
    """An AppRunner whose connections answer protocol errors in the OpenAI envelope and drop
    clients that are too slow to send their headers."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, policy=EnvelopeErrors(header_timeout_s), **kwargs)
