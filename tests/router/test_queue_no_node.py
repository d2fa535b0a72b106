"""Requests waiting in the admission queue are answered at once when no node can serve them
any more, instead of waiting out ``queue_wait_s``."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running, send_report

CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}


async def _long_stream(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(url + CHAT, json=BODY) as resp:
        assert resp.status == 200
        await resp.read()


async def _queued(session: aiohttp.ClientSession, url: str) -> tuple[int, str, float]:
    started = time.monotonic()
    async with session.post(url + CHAT, json=BODY) as resp:
        return resp.status, await resp.text(), time.monotonic() - started


class TestQueuedRequestsWhenNodesGo:
    async def test_agent_reporting_its_backend_down_fails_the_queue_at_once(
        self, session: aiohttp.ClientSession
    ) -> None:
        """One slot, busy; a second request waits; the agent reports its backend down: the
        waiter gets a 503 envelope with Retry-After within a second, not after 10 s."""
        settings = router_settings(report_interval_s=30.0, cap_factor=0.25, queue_wait_s=10.0)
        async with (
            serve(settings) as router,
            running(FakeNode("n1", chunks=40, chunk_delay_s=0.05)) as node,
        ):
            node_id = await register(session, router.url, node)  # 4 slots x 0.25: one
            busy = asyncio.create_task(_long_stream(session, router.url))
            await node.wait_for(lambda n: n.active == 1)
            waiter = asyncio.create_task(_queued(session, router.url))
            await asyncio.sleep(0.2)
            assert not waiter.done()  # queued behind the busy slot
            status = await send_report(
                session, router.url, node_id, node, seq=2, health="unhealthy"
            )
            assert status == 200
            status, text, waited = await waiter
            busy.cancel()
        assert status == 503
        assert '"error"' in text
        assert "no healthy node" in text
        assert waited < 2.0

    async def test_a_silent_agent_fails_the_queue_once_the_node_is_unhealthy(
        self, session: aiohttp.ClientSession
    ) -> None:
        """The agent stops reporting: once missed reports make the node unhealthy, the
        monitor's round of checks answers the waiter, well before queue_wait_s."""
        settings = router_settings(report_interval_s=0.2, cap_factor=0.25, queue_wait_s=10.0)
        async with (
            serve(settings) as router,
            running(FakeNode("n1", chunks=100, chunk_delay_s=0.05)) as node,
        ):
            await register(session, router.url, node)
            busy = asyncio.create_task(_long_stream(session, router.url))
            await node.wait_for(lambda n: n.active == 1)
            status, _, waited = await _queued(session, router.url)
            busy.cancel()
        assert status == 503
        assert waited < 4.0
