"""A whole answer written in one piece (router.client_socket.WholeAnswer) is, byte for byte,
the answer aiohttp writes for the same response, whatever the client's HTTP version and
keep-alive wishes; what that way does not cover goes aiohttp's way."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from router.client_socket import WholeAnswer

BODY = b'{"id":"cmpl-1","choices":[{"index":0,"text":"hi"}]}'
HEADERS = {"Content-Type": "application/json", "X-Inference-Node": "gpu-1"}
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")

Made = Callable[..., web.Response]
ANSWERS: dict[str, Made] = {"aiohttp": web.Response, "whole": WholeAnswer}


def _app(seen: list[web.StreamResponse]) -> web.Application:
    def route(made: Made) -> Callable[[web.Request], object]:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            status = int(request.query.get("status", "200"))
            body = b"" if request.query.get("empty") else BODY
            headers = dict(HEADERS)
            if "node" in request.query:
                headers["X-Inference-Node"] = request.query["node"]
            response = made(status=status, body=body, headers=headers)
            seen.append(response)
            return response

        return handle

    app = web.Application()
    for name, made in ANSWERS.items():
        app.router.add_route("*", f"/{name}", route(made))
    return app


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[web.StreamResponse]]]:
    seen: list[web.StreamResponse] = []
    runner = web.AppRunner(_app(seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, seen
    finally:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes or goes quiet for a moment."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
            got += chunk
    except TimeoutError:
        got += b"<open>"
    finally:
        writer.close()
    return DATE.sub(b"\r\nDate: -\r\n", got)


def _request(path: str, version: str = "1.1", method: str = "POST", extra: str = "") -> bytes:
    body = "" if method in ("GET", "HEAD") else '{"prompt":"hi"}'
    return (
        f"{method} {path} HTTP/{version}\r\nHost: x\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


CASES = {
    "1.1 keep-alive": _request("/{}"),
    "1.1 close": _request("/{}", extra="Connection: close\r\n"),
    "1.0": _request("/{}", "1.0"),
    "1.0 keep-alive": _request("/{}", "1.0", extra="Connection: keep-alive\r\n"),
    "two pipelined": _request("/{}") * 2,
    "empty body": _request("/{}?empty=1"),
    "error status": _request("/{}?status=503"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_whole_answer_is_aiohttps_answer_byte_for_byte(
    server: tuple[int, list[web.StreamResponse]], case: str
) -> None:
    port, seen = server
    ours = await _exchange(port, CASES[case].replace(b"{}", b"whole"))
    theirs = await _exchange(port, CASES[case].replace(b"{}", b"aiohttp"))
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.")
    whole = [r for r in seen if isinstance(r, WholeAnswer)]
    assert whole
    assert all(r.written_directly for r in whole)


@pytest.mark.parametrize(
    "raw",
    [
        _request("/{}", method="HEAD"),
        _request("/{}?status=204"),
        _request("/{}?status=304"),
    ],
    ids=["HEAD", "204", "304"],
)
async def test_answers_without_a_body_go_aiohttps_way_and_read_the_same(
    server: tuple[int, list[web.StreamResponse]], raw: bytes
) -> None:
    port, seen = server
    ours = await _exchange(port, raw.replace(b"{}", b"whole"))
    theirs = await _exchange(port, raw.replace(b"{}", b"aiohttp"))
    assert ours == theirs
    whole = [r for r in seen if isinstance(r, WholeAnswer)]
    assert whole
    assert not any(r.written_directly for r in whole)


async def test_a_header_with_a_line_break_is_refused_as_aiohttp_refuses_it(
    server: tuple[int, list[web.StreamResponse]],
) -> None:
    """Nothing of the answer goes out (no header injection): both ways end the same."""
    port, _ = server
    raw = _request("/{}?node=a%0D%0AX-Evil:%201")
    ours = await _exchange(port, raw.replace(b"{}", b"whole"))
    theirs = await _exchange(port, raw.replace(b"{}", b"aiohttp"))
    assert ours == theirs
    assert b"X-Evil" not in ours
