"""The router's HTTP server: aiohttp's, with protocol-level errors in the OpenAI envelope.

aiohttp answers requests it cannot parse (a bad request line, oversize or too many headers,
broken chunked framing) itself, before any middleware runs, in plain text. The router's clients
expect the OpenAI envelope for every error, so the connection handler is specialised to write
one: oversize headers get 431, other malformed requests 400.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

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


class _EnvelopeRequestHandler(RequestHandler):
    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        """A client that has not finished its first request's headers in time (slowloris)
        gets 408 and is disconnected."""
        transport = self.transport
        if self._request_count or transport is None or transport.is_closing():
            return
        message = f"request headers not received within {self.header_timeout_s:g}s"
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_raw_error(408, "Request Timeout", message))
        transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error envelope")
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
        response = web.Response(
            status=status,
            body=orjson.dumps(envelope(text[:300], kind)),
            content_type="application/json",
        )
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    header_timeout_s = 10.0

    def __call__(self) -> RequestHandler:
        handler = _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        return handler


class RouterRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in the OpenAI envelope and drop
    clients that are too slow to send their headers."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EnvelopeServer  # same state, two methods specialised
        assert isinstance(server, _EnvelopeServer)
        server.header_timeout_s = self._header_timeout_s
        return server
