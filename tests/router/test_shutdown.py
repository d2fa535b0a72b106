"""Graceful shutdown: streams in flight finish within the grace period, the rest are told."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}


async def _read_all(resp: aiohttp.ClientResponse) -> str:
    return (await resp.read()).decode()


class TestShutdown:
    """Stopping the router never drops a stream without an answer."""

    async def test_short_stream_finishes_during_grace(self, session: aiohttp.ClientSession) -> None:
        """A stream that ends within the grace period reaches [DONE] untouched."""
        async with running(FakeNode("n", chunks=5, chunk_delay_s=0.1)) as node:
            stack = contextlib.AsyncExitStack()
            router = await stack.enter_async_context(serve(router_settings(shutdown_grace_s=3)))
            await register(session, router.url, node)
            resp = await session.post(router.url + CHAT, json=BODY)
            reader = asyncio.create_task(_read_all(resp))
            await node.wait_for(lambda n: n.active == 1)
            await stack.aclose()
            text = await reader
        assert text.count("data: {") == 5
        assert text.endswith("data: [DONE]\n\n")
        assert "error" not in text

    async def test_long_stream_is_ended_with_error_event(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A stream still running when the grace period ends gets an SSE error event and
        [DONE], and the node's generation is cancelled."""
        async with running(FakeNode("n", chunks=200, chunk_delay_s=0.05)) as node:
            stack = contextlib.AsyncExitStack()
            router = await stack.enter_async_context(serve(router_settings(shutdown_grace_s=0.3)))
            await register(session, router.url, node)
            resp = await session.post(router.url + CHAT, json=BODY)
            reader = asyncio.create_task(_read_all(resp))
            await node.wait_for(lambda n: n.active == 1)
            await stack.aclose()
            text = await reader
            await node.wait_for(lambda n: n.active == 0)
        assert "the router is shutting down" in text
        assert text.endswith("data: [DONE]\n\n")
