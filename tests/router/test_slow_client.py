"""A client that stops reading is not held forever: bounded buffering, then it is dropped and
the node's generation cancelled."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running


class TestSlowClient:
    """Backpressure from a stalled reader ends in a drop, not in unbounded memory or a hang."""

    async def test_stalled_reader_is_dropped_and_upstream_cancelled(
        self, session: aiohttp.ClientSession
    ) -> None:
        """With a reader that never reads, the router gives up after the slow-client timeout
        and the node sees its request cancelled."""
        settings = router_settings(slow_client_timeout_s=0.5, report_interval_s=30.0)
        node = FakeNode("n", chunks=5000, chunk_delay_s=0.0, pad=16_000)
        async with serve(settings) as router, running(node):
            await register(session, router.url, node)
            sock = await _ask_for_a_stream(router.url)
            try:
                await node.wait_for(lambda n: n.cancelled == 1)
            finally:
                sock.close()
        assert node.cancelled == 1


class TestLaggingClient:
    """A client that falls behind for a while, then reads on, loses nothing."""

    async def test_every_piece_arrives_once_and_in_order(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Pieces go straight to the client socket while it keeps up and through the relay
        loop while it lags (a small receive buffer, not read for a while); across both, the
        client gets every event once, in order."""
        settings = router_settings(slow_client_timeout_s=5.0, report_interval_s=30.0)
        node = FakeNode("n", chunks=300, chunk_delay_s=0.0, pad=40_000)
        loop = asyncio.get_running_loop()
        async with serve(settings) as router, running(node):
            await register(session, router.url, node)
            sock = await _ask_for_a_stream(router.url)
            await asyncio.sleep(0.5)  # fall behind: the router's socket buffer fills
            raw = bytearray()
            try:
                async with asyncio.timeout(10):
                    while not raw.endswith(b"\r\n0\r\n\r\n"):
                        raw += await loop.sock_recv(sock, 65536)
            finally:
                sock.close()
        head, _, chunked = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        text = _dechunk(chunked).decode()
        events = [e for e in text.split("\n\n") if e.startswith("data: {")]
        tokens = [orjson.loads(e[6:])["choices"][0]["delta"]["content"].split()[0] for e in events]
        assert tokens == [f"t{i}" for i in range(300)]
        assert text.rstrip().endswith("data: [DONE]")


async def _ask_for_a_stream(router_url: str) -> socket.socket:
    """A raw client with a small receive buffer that has sent a streamed chat request and
    read nothing yet."""
    loop = asyncio.get_running_loop()
    host, port = router_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    body = orjson.dumps(
        {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    await loop.sock_sendall(
        sock,
        b"POST /inference-cluster/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    return sock


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
