"""A node's first byte and its pauses between chunks have separate bounds."""

from __future__ import annotations

import time

import aiohttp

from router.app import serve
from router.settings import Timeouts
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
TIMEOUTS = Timeouts(connect_s=1.0, first_byte_s=0.3, idle_s=5.0, total_s=30.0)


async def test_a_node_silent_past_the_first_byte_bound_times_out(
    session: aiohttp.ClientSession,
) -> None:
    """First byte 0.3 s, idle 5 s: a node that never answers costs 0.3 s, not 5 s (504)."""
    async with (
        serve(router_settings(timeouts=TIMEOUTS, max_attempts=1)) as router,
        running(FakeNode("n", mode="hang")) as node,
    ):
        await register(session, router.url, node)
        started = time.monotonic()
        async with session.post(router.url + CHAT, json=BODY) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["type"] == "upstream_timeout"
        assert time.monotonic() - started < 2.0


async def test_pauses_between_chunks_get_the_idle_bound(session: aiohttp.ClientSession) -> None:
    """Pauses of 0.5 s between chunks, longer than the first-byte bound, end normally."""
    async with (
        serve(router_settings(timeouts=TIMEOUTS)) as router,
        running(FakeNode("n", chunks=3, chunk_delay_s=0.5)) as node,
    ):
        await register(session, router.url, node)
        async with session.post(router.url + CHAT, json=BODY) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")
        assert "stream_interrupted" not in text
