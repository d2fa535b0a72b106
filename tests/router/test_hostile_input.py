"""Hostile input: malformed, oversized, slow and injected requests all get the right 4xx in the
OpenAI envelope, never a 5xx, and the router keeps serving everyone else meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from router.app import RunningRouter, serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"
M = '"messages": [{"role": "user", "content": "x"}]'


def _deep(depth: int) -> bytes:
    return b'{"model": "m-small", "messages": ' + b"[" * depth + b"]" * depth + b"}"


# (name, body bytes, expected status)
BODY_CASES: list[tuple[str, bytes, int]] = [
    ("not json", b"{not json", 400),
    ("truncated", b'{"model": "m-small", "messages": [{"role": "us', 400),
    ("empty", b"", 400),
    ("whitespace", b"   \n ", 400),
    ("null", b"null", 400),
    ("number", b"42", 400),
    ("string", b'"hello"', 400),
    ("array", b"[]", 400),
    ("trailing garbage", b'{"model": "m-small", ' + M.encode() + b"} extra", 400),
    ("nan literal", b'{"model": "m-small", "temperature": NaN, ' + M.encode() + b"}", 400),
    ("invalid utf-8", b'{"model": "m-\xff\xfe", ' + M.encode() + b"}", 400),
    ("lone surrogate", b'{"model": "\\ud800", ' + M.encode() + b"}", 400),
    ("utf-8 bom", b"\xef\xbb\xbf{}", 400),
    ("deep nesting", _deep(5000), 400),
    ("model missing", ("{" + M + "}").encode(), 400),
    ("model null", ('{"model": null, ' + M + "}").encode(), 400),
    ("model number", ('{"model": 3, ' + M + "}").encode(), 400),
    ("model list", ('{"model": ["a"], ' + M + "}").encode(), 400),
    ("model object", ('{"model": {"a": 1}, ' + M + "}").encode(), 400),
    ("model empty", ('{"model": "", ' + M + "}").encode(), 400),
    ("model blank", ('{"model": "   ", ' + M + "}").encode(), 400),
    ("model huge", ('{"model": "' + "m" * 5000 + '", ' + M + "}").encode(), 400),
    ("model unknown", ('{"model": "no-such-model", ' + M + "}").encode(), 404),
    ("messages missing", b'{"model": "m-small"}', 400),
    ("messages string", b'{"model": "m-small", "messages": "hi"}', 400),
    ("messages object", b'{"model": "m-small", "messages": {"role": "user"}}', 400),
    ("messages empty", b'{"model": "m-small", "messages": []}', 400),
    ("messages of strings", b'{"model": "m-small", "messages": ["hi", "there"]}', 400),
    (
        "messages too many",
        (
            '{"model": "m-small", "messages": [' + ",".join(['{"role":"user"}'] * 300) + "]}"
        ).encode(),
        400,
    ),
    ("stream string", ('{"model": "m-small", "stream": "true", ' + M + "}").encode(), 400),
    ("stream number", ('{"model": "m-small", "stream": 1, ' + M + "}").encode(), 400),
    ("n zero", ('{"model": "m-small", "n": 0, ' + M + "}").encode(), 400),
    ("n absurd", ('{"model": "m-small", "n": 100000, ' + M + "}").encode(), 400),
    ("n string", ('{"model": "m-small", "n": "2", ' + M + "}").encode(), 400),
    ("n bool", ('{"model": "m-small", "n": true, ' + M + "}").encode(), 400),
    ("max_tokens negative", ('{"model": "m-small", "max_tokens": -1, ' + M + "}").encode(), 400),
    ("max_tokens zero", ('{"model": "m-small", "max_tokens": 0, ' + M + "}").encode(), 400),
    (
        "max_tokens absurd",
        ('{"model": "m-small", "max_tokens": 1000000000000, ' + M + "}").encode(),
        400,
    ),
    ("max_tokens float", ('{"model": "m-small", "max_tokens": 1.5, ' + M + "}").encode(), 400),
    ("max_tokens string", ('{"model": "m-small", "max_tokens": "10", ' + M + "}").encode(), 400),
    (
        "max_completion_tokens absurd",
        ('{"model": "m-small", "max_completion_tokens": 99999999999, ' + M + "}").encode(),
        400,
    ),
    ("huge body", b'{"model": "m-small", "x": "' + b"a" * 70_000 + b'"}', 413),
]

# (name, method, path, headers, status)
ROUTE_CASES: list[tuple[str, str, str, dict[str, str], int]] = [
    ("unknown group", "POST", "/nope/v1/chat/completions", {}, 404),
    ("unknown path", "GET", "/inference-cluster/v1/not-here", {}, 404),
    ("root", "GET", "/", {}, 404),
    ("path traversal", "GET", "/inference-cluster/../../etc/passwd", {}, 404),
    ("encoded traversal", "GET", "/inference-cluster/%2e%2e/%2e%2e/etc/passwd", {}, 404),
    ("wrong method on chat", "GET", CHAT, {}, 405),
    ("wrong method on models", "POST", "/inference-cluster/v1/models", {}, 405),
    ("put on health", "PUT", "/health", {}, 405),
    ("unknown node", "GET", "/api/server-groups/inference-cluster/nodes/node-x", {}, 404),
    ("report unknown group", "PUT", "/api/server-groups/nope/nodes/node-x/report", {}, 404),
    ("model card unknown", "GET", "/inference-cluster/v1/models/nope", {}, 404),
    ("tenant header too long", "POST", CHAT, {"X-Octopus-Tenant-Id": "t" * 300}, 400),
    ("tenant header non-ascii", "POST", CHAT, {"X-Octopus-Tenant-Id": "tenant-\u00e9"}, 400),
    ("correlation header too long", "POST", CHAT, {"X-Octopus-Correlation-Id": "c" * 300}, 400),
]

GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n"
POST_CHAT = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
MANY_HEADERS = b"".join(b"X-%d: 1\r\n" % i for i in range(300))

# (name, raw request bytes, status)
RAW_CASES: list[tuple[str, bytes, int]] = [
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("control char in header", GET_HEALTH + b"X-Octopus-Tenant-Id: a\x01b\r\n\r\n", 400),
    ("header injection", GET_HEALTH + b"X-A: a\rInjected: b\r\n\r\n", 400),
    ("oversize header", GET_HEALTH + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ("too many headers", GET_HEALTH + MANY_HEADERS + b"\r\n", 431),
    ("uri too long", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("bad content-length", POST_CHAT + b"Content-Length: abc\r\n\r\n", 400),
    ("bad chunk size", POST_CHAT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (
        "smuggling te+cl",
        POST_CHAT + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("bad http version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
]


async def _raw(url: str, data: bytes, wait_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """Send raw bytes; read one response (status line, headers, Content-Length body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait_s):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(lines[0].split(" ", 2)[1]), orjson.loads(body)


def _envelope(body: dict[str, Any]) -> None:
    err = body["error"]
    assert {"message", "type", "param", "code"} <= err.keys()


@pytest.fixture
async def busy_router(session: aiohttp.ClientSession) -> AsyncIterator[RunningRouter]:
    """A router with one node, kept serving a steady trickle of good requests throughout; the
    trickle must see nothing but 200s."""
    settings = router_settings(
        max_messages=256, client_header_timeout_s=1.0, report_interval_s=30.0
    )
    async with serve(settings) as router, running(FakeNode("n")) as node:
        await register(session, router.url, node)
        good: list[int] = []
        stop = asyncio.Event()
        first = asyncio.Event()

        async def trickle() -> None:
            body = {"model": "m-small", "messages": [{"role": "user", "content": "x"}]}
            while not stop.is_set():
                async with session.post(router.url + CHAT, json=body) as resp:
                    good.append(resp.status)
                first.set()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(trickle())
        await first.wait()
        served_before = len(good)
        yield router
        async with asyncio.timeout(5):  # still serving after the hostile case
            while len(good) <= served_before + 1:  # noqa: ASYNC110 - counts finished requests
                await asyncio.sleep(0.01)
        stop.set()
        await task
        assert set(good) == {200}


class TestBodies:
    """Every malformed or absurd body is refused with its 4xx before any node sees it."""

    @pytest.mark.parametrize(("name", "body", "status"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
    async def test_body(
        self,
        busy_router: RunningRouter,
        session: aiohttp.ClientSession,
        name: str,
        body: bytes,
        status: int,
    ) -> None:
        """The body case answers its status in the envelope."""
        headers = {"Content-Type": "application/json"}
        async with session.post(busy_router.url + CHAT, data=body, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            _envelope(await resp.json())


class TestRoutesAndHeaders:
    """Unknown places, wrong methods and bad identity headers answer 4xx in the envelope."""

    @pytest.mark.parametrize(
        ("name", "method", "path", "headers", "status"),
        ROUTE_CASES,
        ids=[c[0] for c in ROUTE_CASES],
    )
    async def test_route(
        self,
        busy_router: RunningRouter,
        session: aiohttp.ClientSession,
        name: str,
        method: str,
        path: str,
        headers: dict[str, str],
        status: int,
    ) -> None:
        """The route case answers its status in the envelope."""
        body = {"model": "m-small", "messages": [{"role": "user", "content": "x"}]}
        async with session.request(
            method, busy_router.url + path, json=body, headers=headers
        ) as resp:
            assert resp.status == status, await resp.text()
            _envelope(await resp.json())


class TestProtocol:
    """Malformed HTTP, oversize headers and slow clients get 4xx envelopes too."""

    @pytest.mark.parametrize(("name", "data", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
    async def test_raw(
        self, busy_router: RunningRouter, name: str, data: bytes, status: int
    ) -> None:
        """The raw request answers its status in the envelope."""
        code, body = await _raw(busy_router.url, data)
        assert code == status
        _envelope(body)

    async def test_slowloris_headers_get_408(self, busy_router: RunningRouter) -> None:
        """A client trickling its headers is answered 408 and dropped after the header timeout."""
        code, body = await _raw(busy_router.url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        assert code == 408
        _envelope(body)

    async def test_slow_body_gets_408(self) -> None:
        """A client that promises a body and never sends it is answered 408."""
        settings = router_settings(client_body_timeout_s=0.5)
        async with serve(settings) as router:
            data = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
            code, body = await _raw(router.url, data)
        assert code == 408
        _envelope(body)


def test_suite_has_at_least_fifty_cases() -> None:
    """The hostile-input suite covers at least fifty distinct cases."""
    assert len(BODY_CASES) + len(ROUTE_CASES) + len(RAW_CASES) + 2 >= 50
