"""The agent's calls to its backend on the lean client: methods, bytes, connections, lines.

A small aiohttp app stands in for the backend and records what reached it; the agent's side is
a :class:`BackendProxy` in a small front app (the agent's own routes are tested elsewhere).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from node_agent.backend_answer import MAX_LINE
from node_agent.errors import error_middleware
from node_agent.proxy import BackendProxy
from node_agent.traffic import TrafficStats
from node_protocol.upstream import UpstreamPool

from .conftest import ServerFactory, base_url, free_port


@dataclass
class Backend:
    """What reached the fake backend, and what it sends on ``/lines``."""

    seen: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    stream_gate: asyncio.Event = field(default_factory=asyncio.Event)
    stream_cut: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            (request.method, request.raw_path, body, request.headers.get("Content-Length"))
        )
        self.connections.append(id(request.transport))
        if request.path == "/gz":
            packed = gzip.compress(b'{"ok": true}')
            return web.Response(body=packed, headers={"Content-Encoding": "gzip"})
        if request.path in ("/lines", "/stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                for piece in self.lines:
                    await resp.write(piece)
                    await asyncio.sleep(0)
                if request.path == "/stream":
                    await self.stream_gate.wait()
            except (asyncio.CancelledError, ConnectionError):
                self.stream_cut.set()
                raise
            await resp.write_eof()
            return resp
        return web.json_response({"method": request.method})


@dataclass
class Front:
    url: str
    backend: Backend


def front_app(backend_url: str, *, connect_timeout_s: float = 2.0) -> web.Application:
    pool = UpstreamPool()
    proxy = BackendProxy(
        pool,
        backend_url,
        TrafficStats(),
        api_key=None,
        first_byte_timeout_s=2.0,
        idle_timeout_s=2.0,
        total_timeout_s=10.0,
        connect_timeout_s=connect_timeout_s,
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        return await proxy.forward(request, request.rel_url.raw_path, native=True)

    async def lines(request: web.Request) -> web.Response:
        """The backend's ``/lines`` line by line, then what is left of it read whole."""
        got: list[str] = []
        async with proxy.opened(request, "/lines", b"{}") as upstream:
            take = int(request.query.get("take", "1000"))
            while len(got) < take and (line := await upstream.readline()):
                got.append(line.decode())
            rest = (await upstream.read()).decode()
        return web.json_response({"lines": got, "rest": rest})

    async def close_pool(app: web.Application) -> AsyncIterator[None]:
        yield
        pool.close()

    app = web.Application(middlewares=[error_middleware])
    app.cleanup_ctx.append(close_pool)
    app.router.add_post("/opened/lines", lines)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@pytest.fixture
async def front(aiohttp_server: ServerFactory) -> Front:
    backend = Backend()
    backend_server = await aiohttp_server(backend.app())
    front_server = await aiohttp_server(front_app(base_url(backend_server)))
    return Front(base_url(front_server), backend)


async def error_code(resp: aiohttp.ClientResponse) -> str:
    code: str = (await resp.json())["error"]["code"]
    return code


class TestRequests:
    """What the agent sends: the method, the raw path and query, a body only when it has one."""

    async def test_get_with_a_query_string_goes_without_a_body(self, front: Front) -> None:
        """A GET reaches the backend with its query as the client encoded it, and no body."""
        async with aiohttp.ClientSession() as client:
            r = await client.get(f"{front.url}/v1/models?a=1&b=x%20y%26z")
            assert r.status == 200
            assert await r.json() == {"method": "GET"}
        method, raw_path, body, length = front.backend.seen[-1]
        assert (method, raw_path, body, length) == ("GET", "/v1/models?a=1&b=x%20y%26z", b"", None)

    async def test_other_methods_carry_their_body(self, front: Front) -> None:
        """PUT and DELETE pass through with their bodies; an empty POST says Content-Length 0."""
        async with aiohttp.ClientSession() as client:
            for method, data in (("PUT", b"abc"), ("DELETE", b"x"), ("POST", None)):
                async with client.request(method, f"{front.url}/thing", data=data) as r:
                    assert (await r.json())["method"] == method
        sent = [(m, b, n) for m, _, b, n in front.backend.seen]
        assert sent == [("PUT", b"abc", "3"), ("DELETE", b"x", "1"), ("POST", b"", "0")]


class TestAnswers:
    """The answer's bytes come back as the backend sent them."""

    async def test_an_encoded_body_is_passed_back_undecoded(self, front: Front) -> None:
        """A gzip body keeps its Content-Encoding and Content-Length and is not unpacked."""
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            r = await client.get(f"{front.url}/gz")
            raw = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Length"] == str(len(raw))
        assert gzip.decompress(raw) == b'{"ok": true}'


class TestConnections:
    """A connection is reused only after an answer read to its end; otherwise it is closed."""

    async def test_answers_read_to_the_end_share_one_connection(self, front: Front) -> None:
        """Three calls in a row go over one kept-alive connection to the backend."""
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.post(f"{front.url}/v1/chat", data=b"{}") as r:
                    await r.read()
        assert len(set(front.backend.connections)) == 1

    async def test_a_client_gone_mid_stream_closes_the_backend_connection(
        self, front: Front
    ) -> None:
        """The backend sees its stream cut, and the next call comes on a new connection."""
        front.backend.lines = [b"data: 1\n\n"]
        async with aiohttp.ClientSession() as client:
            r = await client.post(f"{front.url}/stream", data=b"{}")
            async with asyncio.timeout(5):
                await r.content.readuntil(b"\n\n")
            r.close()
            async with asyncio.timeout(5):
                await front.backend.stream_cut.wait()
            async with client.post(f"{front.url}/v1/chat", data=b"{}") as r2:
                await r2.read()
        first, second = front.backend.connections
        assert first != second

    async def test_a_connect_timeout_is_backend_unreachable(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """No connection within the connect timeout is a 502, not a 504 (with no time at all
        to connect, it is over before a refusal could come)."""
        app = front_app(f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.0)
        front_server = await aiohttp_server(app)
        async with aiohttp.ClientSession() as client:
            r = await client.get(f"{base_url(front_server)}/v1/models")
            assert r.status == 502
            assert await error_code(r) == "backend_unreachable"
            assert "connect timeout" in (await r.json())["error"]["message"]


class TestLines:
    """A held-open answer reads line by line, however its bytes were split."""

    async def test_lines_across_pieces_and_a_last_line_without_newline(self, front: Front) -> None:
        """Pieces that split and join lines give whole lines; the end gives what is left."""
        front.backend.lines = [b"da", b"ta: 1\n", b"\ndata: 2\n\nda", b"ta: 3"]
        async with aiohttp.ClientSession() as client:
            r = await client.post(f"{front.url}/opened/lines")
            got = await r.json()
        assert got == {"lines": ["data: 1\n", "\n", "data: 2\n", "\n", "data: 3"], "rest": ""}

    async def test_read_after_lines_returns_the_rest(self, front: Front) -> None:
        """What a line read had already taken in comes first in the whole read."""
        front.backend.lines = [b"one\ntwo\nthree", b"\nfour"]
        async with aiohttp.ClientSession() as client:
            r = await client.post(f"{front.url}/opened/lines?take=1")
            got = await r.json()
        assert got == {"lines": ["one\n"], "rest": "two\nthree\nfour"}

    @pytest.mark.parametrize("newline", [b"\n", b""])
    async def test_an_oversized_line_is_a_bad_answer(self, front: Front, newline: bytes) -> None:
        """A line longer than the limit (ended or not) fails the call as backend_bad_answer."""
        front.backend.lines = [b"data: ", b"x" * (MAX_LINE + 10), newline, b"more\n"]
        async with aiohttp.ClientSession() as client:
            r = await client.post(f"{front.url}/opened/lines")
            assert r.status == 502
            assert await error_code(r) == "backend_bad_answer"
