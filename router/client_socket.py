"""The client's connection: the one module that reaches into aiohttp's private parts.

Four things the router needs are not in aiohttp's public API:

* **Headers sent with the first piece.** A stream's status line and headers wait until its first
  token is in hand (a node may still fail before it) and then go out with it in one write
  (:class:`HeldResponse`: aiohttp's buffered-headers path, the one ``web.Response`` takes, chosen
  by ``_send_headers_immediately``).
* **Stream pieces written straight to the socket.** A relayed stream's pieces go to the client's
  transport as the node's connection parses them, framed as aiohttp frames them, with no task
  switch in between (:func:`piece_writer`): the relay's cost is per piece, and aiohttp's writer
  costs a coroutine per piece. This relies on the headers having gone out (with the first
  write) and on the chunked framing the response announced.
* **A whole answer in one write.** A non-streamed answer's status line, headers and body go to
  the client's socket in one write from :meth:`WholeAnswer.prepare`, made as aiohttp makes them
  (its own header serialiser, the same defaults and ``Connection`` rules), without the writer's
  chain of coroutines: measured in a bare aiohttp server, 209,000 instructions a short request
  against 179,000. Whatever that way does not cover (HEAD, a status without a body, cookies,
  compression, a response-prepare signal, a client that has not taken what was sent before)
  goes aiohttp's way.
* **A specialised connection handler.** aiohttp answers requests it cannot parse itself, in
  plain text, before any middleware runs, and has no bound on the time a client may take to send
  its headers. :class:`HookedRunner` makes its server build a subclass of aiohttp's private
  ``RequestHandler`` that asks a :class:`ConnectionPolicy` for both.

All were written against aiohttp ``>=3.14,<3.15`` (:data:`TESTED_AIOHTTP`, the range
``pyproject.toml`` pins). Importing this module checks the version and every private name it
uses, and raises :class:`UnsupportedAiohttp` naming the range, rather than misbehave quietly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_writer import _serialize_headers
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

TESTED_AIOHTTP = ((3, 14), (3, 15))  # >= first, < second (major, minor)
TESTED_RANGE = "aiohttp>={}.{},<{}.{}".format(*TESTED_AIOHTTP[0], *TESTED_AIOHTTP[1])


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp is not one this module was tested with."""


def _version(text: str) -> tuple[int, int]:
    major, minor, *_ = text.split(".")
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# What WholeAnswer reads and sets of a response, as aiohttp's own prepare does.
_RESPONSE_STATE = (
    "_body", "_status", "_reason", "_headers", "_keep_alive", "_chunked", "_compression",
    "_cookies", "_eof_sent", "_payload_writer", "_body_length",
)  # fmt: skip


def _serializes() -> bool:
    try:
        got = _serialize_headers("HTTP/1.1 200 OK", CIMultiDict({"A": "b"}))
    except Exception:
        return False
    return bool(got == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n")


def missing_internals() -> list[str]:
    """The private aiohttp names and behaviours this module relies on that are not there."""
    probe = web.Response(body=b"")
    needs = {
        "RequestHandler.handle_error(self, request, status, exc, message)": _parameters(
            RequestHandler.handle_error
        )
        == ["self", "request", "status", "exc", "message"],
        "RequestHandler(manager, *, loop, **kwargs)": _parameters(RequestHandler.__init__)[:3]
        == ["self", "manager", "loop"],
        "RequestHandler._request_count": "_request_count"
        in getattr(RequestHandler, "__slots__", ()),
        "RequestHandler.connection_made/connection_lost": all(
            callable(getattr(RequestHandler, name, None))
            for name in ("connection_made", "connection_lost")
        ),
        "web.Server.__call__ builds the RequestHandler": "RequestHandler("
        in inspect.getsource(web.Server.__call__),
        "web.Server keeps _loop and _kwargs": all(
            f"self.{name} =" in inspect.getsource(web.Server.__init__)
            for name in ("_loop", "_kwargs")
        ),
        "web.AppRunner._make_server()": inspect.iscoroutinefunction(
            getattr(web.AppRunner, "_make_server", None)
        ),
        "web.StreamResponse._send_headers_immediately is True": getattr(
            web.StreamResponse, "_send_headers_immediately", None
        )
        is True,
        "http_writer._serialize_headers(status_line, headers)": _serializes(),
        "web.Response keeps " + ", ".join(_RESPONSE_STATE): all(
            hasattr(probe, name) for name in _RESPONSE_STATE
        ),
        "web.Response.prepare/write_eof return at once once _eof_sent": "if self._eof_sent:"
        in inspect.getsource(web.StreamResponse.prepare)
        and "if self._eof_sent:" in inspect.getsource(web.Response.write_eof),
    }
    return [name for name, present in needs.items() if not present]


def check_aiohttp(version: str = aiohttp.__version__) -> None:
    """Raise :class:`UnsupportedAiohttp` unless ``version`` is in the tested range and every
    private name this module uses is there."""
    low, high = TESTED_AIOHTTP
    if not low <= _version(version) < high:
        raise UnsupportedAiohttp(
            f"router.client_socket uses aiohttp internals and was tested with {TESTED_RANGE}; "
            f"aiohttp {version} is installed: install a version in that range, or re-test "
            "router.client_socket and widen the range (here and in pyproject.toml)"
        )
    missing = missing_internals()
    if missing:
        raise UnsupportedAiohttp(
            f"aiohttp {version} lacks what router.client_socket relies on (tested with "
            f"{TESTED_RANGE}): {', '.join(missing)}"
        )


check_aiohttp()


class HeldResponse(web.StreamResponse):
    """A stream response whose status line and headers go out with its first write."""

    _send_headers_immediately = False


class WholeAnswer(web.Response):
    """A whole answer (bytes) written in one piece when prepared (see the module doc);
    ``written_directly`` says whether it went that way."""

    written_directly = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent or self._payload_writer is not None or not self._direct(request):
            return await super().prepare(request)  # which returns at once if already sent
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        body = cast(bytes, self._body)
        headers = self._headers
        # Response._start, then StreamResponse._prepare_headers, for a body of bytes
        if hdrs.CONTENT_LENGTH not in headers:
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        if body:
            headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
        version = request.version
        if hdrs.CONNECTION not in headers:
            if keep_alive:
                if version == HttpVersion10:
                    headers[hdrs.CONNECTION] = "keep-alive"
            elif version == HttpVersion11:
                headers[hdrs.CONNECTION] = "close"
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        data = _serialize_headers(status_line, headers) + body
        transport.write(data)
        request.writer.output_size += len(data)  # what aiohttp reads to know an answer began
        self._eof_sent, self._body_length, self.written_directly = True, len(body), True
        return None

    def _direct(self, request: web.BaseRequest) -> bool:
        """Whether this answer can go in one write: a body of bytes that is sent, nothing that
        aiohttp's way adds, and a client that has taken what was sent before (else aiohttp's
        way waits for it)."""
        status = self._status
        if (
            request.method == hdrs.METH_HEAD
            or status < 200
            or status in (204, 304)
            or not isinstance(self._body, bytes)
            or self._chunked
            or self._compression
            or self._cookies
            or has_backlog(request)
        ):
            return False
        apps = request.match_info.apps if isinstance(request, web.Request) else ()
        return not any(app.on_response_prepare for app in apps)


def piece_writer(
    request: web.BaseRequest,
    response: web.StreamResponse,
    prepare: Callable[[bytes], bytes | None],
) -> Callable[[bytes], bool]:
    """For a stream response already written to (its headers are out): a function that writes
    one piece to the client's socket at once and says whether it did. ``prepare`` turns the
    piece into the bytes to send, or refuses it (None). A client that has not taken what was
    sent before gets nothing here either: the caller then writes the piece through
    ``response`` (which waits for it)."""
    transport = request.transport
    chunked = response.headers.get("Transfer-Encoding") == "chunked"

    def push(piece: bytes) -> bool:
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        data = prepare(piece)
        if data is None:
            return False
        if not data:  # an empty chunk would end a chunked body
            return True
        if chunked:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)
        return True

    return push


def has_backlog(request: web.BaseRequest) -> bool:
    """Whether the client has not yet taken everything written to it."""
    transport = request.transport
    return transport is not None and transport.get_write_buffer_size() > 0


class ConnectionPolicy(Protocol):
    """What a connection does where aiohttp would answer by itself."""

    header_timeout_s: float

    def headers_too_slow(self) -> bytes:
        """The raw HTTP answer for a client that did not send its first headers in time."""
        ...

    def error_response(
        self, request: web.BaseRequest, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse or serve (``status`` is aiohttp's)."""
        ...


class _HookedHandler(RequestHandler):
    policy: ConnectionPolicy
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.policy.header_timeout_s, self._too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        transport = self.transport
        if self._request_count or transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.policy.headers_too_slow())
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        response = self.policy.error_response(request, status, exc, message)
        response.force_close()
        return response


class _HookedServer(web.Server):
    policy: ConnectionPolicy

    def __call__(self) -> RequestHandler:
        handler = _HookedHandler(self, loop=self._loop, **self._kwargs)
        handler.policy = self.policy
        return handler


class HookedRunner(web.AppRunner):
    """An AppRunner whose connections follow ``policy`` for unparsable requests and slow
    headers."""

    def __init__(self, app: web.Application, *, policy: ConnectionPolicy, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._policy = policy

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _HookedServer  # same state; only __call__ differs
        assert isinstance(server, _HookedServer)
        server.policy = self._policy
        return server
