"""The client the router calls nodes with, against real servers on real sockets.

aiohttp servers stand in for well-behaved nodes; raw asyncio servers send what aiohttp would
never send (bodies that end with the connection, garbage, kept connections closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web

from node_protocol.upstream import (
    HIGH_WATER,
    CallLimits,
    ConnectTimeout,
    UpstreamBroken,
    UpstreamPool,
)

from .raw_node import answering, raw_server, read_request

LIMITS = CallLimits(connect_s=2.0, idle_s=2.0, total_s=10.0)
JSON = {"Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def serving(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def echo_app(connections: set[object]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        connections.add(id(request.transport))
        body = await request.read()
        return web.Response(
            body=body,
            headers={"X-Path": request.path, "X-Tenant": request.headers.get("X-Tenant", "")},
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    return app


class TestCalls:
    async def test_answer_and_headers_come_back_and_the_connection_is_kept(
        self, pool: UpstreamPool
    ) -> None:
        """Status, lower-cased headers and body arrive; three calls share one connection."""
        connections: set[object] = set()
        async with serving(echo_app(connections)) as url:
            for i in range(3):
                resp = await pool.post(
                    url + "/v1", "/chat", b'{"n":%d}' % i, {**JSON, "X-Tenant": "t1"}, LIMITS
                )
                assert resp.status == 200
                assert resp.headers["x-path"] == "/v1/chat"  # the base URL's path is kept
                assert resp.headers["x-tenant"] == "t1"
                assert await resp.read() == b'{"n":%d}' % i
                resp.close()
        assert len(connections) == 1

    async def test_chunked_stream_arrives_piece_by_piece(self, pool: UpstreamPool) -> None:
        """A chunked answer is decoded; pieces come as they are sent, and b'' ends it."""
        gate = asyncio.Event()

        async def stream(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: 1\n\n")
            await gate.wait()
            await resp.write(b"data: 2\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/s", stream)
        async with serving(app) as url:
            resp = await pool.post(url, "/s", b"{}", JSON, LIMITS)
            assert resp.headers["transfer-encoding"] == "chunked"
            assert await resp.readany() == b"data: 1\n\n"  # before the second is sent
            gate.set()
            rest = b""
            while chunk := await resp.readany():
                rest += chunk
            assert rest == b"data: 2\n\n"
            resp.close()

    async def test_a_slow_reader_stops_the_reading(self, pool: UpstreamPool) -> None:
        """While more than HIGH_WATER bytes wait unread, nothing more is read from the node;
        everything still arrives whole once read."""
        size = 4 * HIGH_WATER
        piece = b"x" * 65536

        async def big(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(size // len(piece)):
                await resp.write(piece)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/big", big)
        async with serving(app) as url:
            resp = await pool.post(url, "/big", b"{}", JSON, LIMITS)
            await asyncio.sleep(0.3)
            conn = resp._conn
            assert conn.buffered <= HIGH_WATER + 2 * len(piece)
            assert conn.transport is not None
            assert not conn.transport.is_reading()
            assert len(await resp.read()) == size


class TestMethods:
    """Any method goes out (the node agent's calls to its backend), with or without a body."""

    async def test_get_without_a_body_and_with_a_query_string(self, pool: UpstreamPool) -> None:
        """A GET goes without Content-Length; the query reaches the node as it was encoded."""
        seen: list[tuple[str, str, str | None, bytes]] = []

        async def anything(request: web.Request) -> web.Response:
            body = await request.read()
            seen.append(
                (request.method, request.raw_path, request.headers.get("Content-Length"), body)
            )
            return web.Response(text=request.method)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        async with serving(app) as url:
            for method, body in (("GET", None), ("DELETE", None), ("PUT", b"abc")):
                resp = await pool.request(method, url + "/v1", "/m?a=1&b=x%20y", body, {}, LIMITS)
                assert await resp.read() == method.encode()
                resp.close()
        assert seen == [
            ("GET", "/v1/m?a=1&b=x%20y", None, b""),
            ("DELETE", "/v1/m?a=1&b=x%20y", "0", b""),
            ("PUT", "/v1/m?a=1&b=x%20y", "3", b"abc"),
        ]

    async def test_pace_bounds_each_next_piece(self, pool: UpstreamPool) -> None:
        """After the headers, ``pace`` sets the wait for each next piece of the body."""

        async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
                await asyncio.sleep(0.3)
                writer.write(b"def")

        async with raw_server(slow_body) as url:
            resp = await pool.post(url, "/x", b"{}", JSON, CallLimits(2.0, 0.1, 10.0))
            resp.pace(2.0)  # longer than the node's pause: the body comes whole
            assert await resp.read() == b"abcdef"
            resp = await pool.post(url, "/x", b"{}", JSON, CallLimits(2.0, 2.0, 10.0))
            resp.pace(0.1)
            with pytest.raises(TimeoutError):
                await resp.read()


class TestFailures:
    async def test_refused_connection_is_an_os_error(self, pool: UpstreamPool) -> None:
        async with raw_server(lambda r, w: asyncio.sleep(0)) as url:
            pass  # closed: nothing listens there now
        with pytest.raises(ConnectionRefusedError):
            await pool.post(url, "/x", b"{}", JSON, LIMITS)

    async def test_no_connection_within_the_connect_bound_is_a_connect_timeout(
        self, pool: UpstreamPool
    ) -> None:
        """A connect that outlasts ``connect_s`` is a ConnectTimeout (a TimeoutError): with no
        time at all, it is over before the refusal could come."""
        async with raw_server(lambda r, w: asyncio.sleep(0)) as url:
            pass  # closed: nothing listens there now
        with pytest.raises(ConnectTimeout):
            await pool.post(url, "/x", b"{}", JSON, CallLimits(0.0, 2.0, 10.0))

    async def test_no_headers_within_the_idle_bound_times_out(self, pool: UpstreamPool) -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(5)

        async with raw_server(silent) as url:
            with pytest.raises(TimeoutError):
                await pool.post(url, "/x", b"{}", JSON, CallLimits(2.0, 0.2, 10.0))

    async def test_a_stalled_body_times_out(self, pool: UpstreamPool) -> None:
        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await asyncio.sleep(5)

        async with raw_server(stall) as url:
            resp = await pool.post(url, "/x", b"{}", JSON, CallLimits(2.0, 0.2, 10.0))
            with pytest.raises(TimeoutError):
                await resp.read()

    async def test_garbage_is_upstream_broken(self, pool: UpstreamPool) -> None:
        async with raw_server(answering(b"this is not http\r\n\r\n", close=False)) as url:
            with pytest.raises(UpstreamBroken):
                await pool.post(url, "/x", b"{}", JSON, LIMITS)

    async def test_a_body_cut_short_is_upstream_broken(self, pool: UpstreamPool) -> None:
        cut = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        async with raw_server(cut) as url:
            resp = await pool.post(url, "/x", b"{}", JSON, LIMITS)
            assert await resp.readany() == b"only this"
            with pytest.raises(UpstreamBroken):
                await resp.readany()

    async def test_a_body_that_ends_with_the_connection_is_whole(self, pool: UpstreamPool) -> None:
        """No length and no chunking: the body runs to the close, which is its end."""
        close_delimited = answering(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"ok": true}')
        async with raw_server(close_delimited) as url:
            resp = await pool.post(url, "/x", b"{}", JSON, LIMITS)
            assert await resp.read() == b'{"ok": true}'

    async def test_a_kept_connection_closed_by_the_node_is_replaced(
        self, pool: UpstreamPool
    ) -> None:
        """The node closes each connection after answering, though it said keep-alive; the
        next call goes out again on a new connection instead of failing."""
        served = 0

        async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await read_request(reader)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()

        async with raw_server(one_shot) as url:
            for _ in range(3):
                resp = await pool.post(url, "/x", b"{}", JSON, LIMITS)
                assert await resp.read() == b"ok"
                resp.close()
                await asyncio.sleep(0.2)  # the node has closed the kept connection by now
        assert served == 3

    async def test_closing_mid_answer_closes_the_connection(self, pool: UpstreamPool) -> None:
        """A response closed before its end is not reused: the node sees the connection go."""
        gone = asyncio.Event()

        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await reader.read()  # returns at EOF: the client closed
            gone.set()

        async with raw_server(endless) as url:
            resp = await pool.post(url, "/x", b"{}", JSON, LIMITS)
            assert await resp.readany() == b"hello"
            resp.close()
            async with asyncio.timeout(2):
                await gone.wait()
        assert not pool._idle.get(pool.origin(url))


class TestTls:
    """Nodes behind https: the pool verifies them against the CA it was given."""

    async def test_a_node_with_a_trusted_certificate_answers(self) -> None:
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with serving(echo_app(set()), server_ctx) as url:
            assert url.startswith("https://")
            trusting = UpstreamPool(client_ctx)
            resp = await trusting.post(url, "/v1/x", b'{"tls":1}', JSON, LIMITS)
            assert await resp.read() == b'{"tls":1}'
            resp.close()
            trusting.close()
            with pytest.raises(ssl.SSLCertVerificationError):
                await UpstreamPool().post(url, "/v1/x", b"{}", JSON, LIMITS)  # not trusted
