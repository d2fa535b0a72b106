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
            host, port = router.url.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            body = orjson.dumps(
                {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            )
            request = (
                b"POST /inference-cluster/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            ) + body
            await asyncio.get_running_loop().sock_sendall(sock, request)
            try:
                await node.wait_for(lambda n: n.cancelled == 1)
            finally:
                sock.close()
        assert node.cancelled == 1
