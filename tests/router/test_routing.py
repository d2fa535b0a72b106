"""Routing through the router to real (fake) nodes over sockets: spread, failover, streams."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson

from router.app import REGISTRY, RunningRouter, serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"


def _chat(model: str = "m-small", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def _served_by(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["X-Inference-Node"]


def _in_flight(router: RunningRouter) -> int:
    group = router.app[REGISTRY].groups["inference-cluster"]
    return sum(n.in_flight for n in group.nodes.values())


class TestModelAwareness:
    """Requests for a model reach only nodes that serve it."""

    async def test_only_nodes_with_the_model(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Twenty requests for each of two models land only on the nodes listing them."""
        async with (
            running(FakeNode("small-1", models=("m-small",))) as a,
            running(FakeNode("big-1", models=("m-big",))) as b,
            running(FakeNode("both", models=("m-small", "m-big"))) as c,
        ):
            for node in (a, b, c):
                await register(session, router.url, node)
            url = router.url + CHAT
            small = await asyncio.gather(*(_served_by(session, url, _chat()) for _ in range(20)))
            big = await asyncio.gather(
                *(_served_by(session, url, _chat("m-big")) for _ in range(20))
            )
        assert set(small) <= {"small-1", "both"}
        assert set(big) <= {"big-1", "both"}
        assert len(set(small)) == 2
        assert len(set(big)) == 2


class TestLeastLoaded:
    """Under concurrent load the node with fewer requests in flight gets the next one."""

    async def test_concurrent_requests_spread_evenly(self, session: aiohttp.ClientSession) -> None:
        """Forty concurrent slow requests over two equal nodes split 20/20 (exact reservations),
        the ones past the nodes' caps waiting their turn at the router."""
        # These fake nodes report once: a long report interval keeps them healthy meanwhile.
        async with (
            serve(router_settings(report_interval_s=30.0)) as router,
            running(FakeNode("a", chunks=4, chunk_delay_s=0.05)) as a,
            running(FakeNode("b", chunks=4, chunk_delay_s=0.05)) as b,
        ):
            await register(session, router.url, a)
            await register(session, router.url, b)
            url = router.url + CHAT
            served = await asyncio.gather(
                *(_served_by(session, url, _chat(stream=True)) for _ in range(40))
            )
        assert Counter(served) == {"a": 20, "b": 20}
        assert _in_flight(router) == 0

    async def test_busy_node_is_avoided(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """While one node holds long requests, new short ones go to the idle node."""
        async with (
            running(FakeNode("busy", chunks=20, chunk_delay_s=0.1)) as busy,
            running(FakeNode("idle")) as idle,
        ):
            await register(session, router.url, busy)
            url = router.url + CHAT
            long_ones = [
                asyncio.create_task(_served_by(session, url, _chat(stream=True))) for _ in range(3)
            ]
            await busy.wait_for(lambda n: n.active == 3)
            await register(session, router.url, idle)
            short = [await _served_by(session, url, _chat()) for _ in range(6)]
            await asyncio.gather(*long_ones)
        assert Counter(short) == {"idle": 6}

    async def test_agent_reported_load_counts(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node whose agent reports many requests in flight (from elsewhere) is avoided."""
        async with running(FakeNode("loaded")) as loaded, running(FakeNode("free")) as free:
            await register(session, router.url, loaded, in_flight=12)
            await register(session, router.url, free, in_flight=0)
            url = router.url + CHAT
            served = [await _served_by(session, url, _chat()) for _ in range(5)]
        assert Counter(served) == {"free": 5}


class TestFailover:
    """Failures before the first byte move to the next node; after it the client is told."""

    async def test_dead_node_is_skipped(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node that refuses connections is retried elsewhere: every request succeeds."""
        async with running(FakeNode("gone")) as gone:
            await register(session, router.url, gone)
        async with running(FakeNode("alive")) as alive:
            await register(session, router.url, alive)
            url = router.url + CHAT
            served = [await _served_by(session, url, _chat()) for _ in range(6)]
        assert set(served) == {"alive"}

    async def test_500_before_first_byte_fails_over(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node answering 500 is retried on another node and marked degraded."""
        async with (
            running(FakeNode("broken", mode="error_500")) as broken,
            running(FakeNode("fine")) as fine,
        ):
            await register(session, router.url, broken)
            await register(session, router.url, fine, in_flight=1)  # so "broken" is tried first
            url = router.url + CHAT
            served = [await _served_by(session, url, _chat(stream=True)) for _ in range(4)]
            async with session.get(
                router.url + "/api/server-groups/inference-cluster/nodes"
            ) as resp:
                states = {n["name"]: n["status"] for n in (await resp.json())["nodes"]}
        assert set(served) == {"fine"}
        assert states["broken"] in ("degraded", "unhealthy")

    async def test_failure_before_first_byte_waits_for_the_full_node_instead_of_failing(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A request whose only free node fails before answering waits for a slot on a full
        node and is served there, instead of failing with a 502."""
        async with (
            running(FakeNode("full", chunks=5, chunk_delay_s=0.1)) as full,
            running(FakeNode("broken", mode="error_500")) as broken,
        ):
            await register(session, router.url, full, slots=1)
            url = router.url + CHAT
            first = asyncio.create_task(_served_by(session, url, _chat(stream=True)))
            await full.wait_for(lambda n: n.active == 1)
            await register(session, router.url, broken, slots=1)  # free, but failing
            second = await _served_by(session, url, _chat(stream=True))
            assert await first == "full"
        assert second == "full"
        assert len(broken.seen) == 1

    async def test_cut_after_first_byte_ends_with_error_event(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream cut mid-way ends with an SSE error event and then [DONE]."""
        async with running(FakeNode("flaky", mode="die_mid_stream", chunks=6)) as flaky:
            await register(session, router.url, flaky)
            async with session.post(router.url + CHAT, json=_chat(stream=True)) as resp:
                assert resp.status == 200
                raw = await resp.read()
        events = [e for e in raw.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        last = orjson.loads(events[-2].removeprefix("data: "))
        assert last["error"]["code"] == "stream_interrupted"
        assert events[0].startswith("data: {")
        assert _in_flight(router) == 0


class TestStreaming:
    """Streams are relayed chunk by chunk, and a client that leaves cancels the node's work."""

    async def test_chunks_arrive_before_the_stream_ends(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The first chunk reaches the client long before the last one is produced."""
        loop = asyncio.get_running_loop()
        async with running(FakeNode("slow", chunks=5, chunk_delay_s=0.2)) as slow:
            await register(session, router.url, slow)
            async with session.post(router.url + CHAT, json=_chat(stream=True)) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                start = loop.time()
                times = []
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        times.append(loop.time() - start)
        assert len(times) == 6
        assert times[0] < 0.15
        assert times[-1] > 0.7

    async def test_client_disconnect_cancels_upstream(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Closing the client connection mid-stream cancels the node's handler and frees the
        router's slot."""
        async with running(FakeNode("long", chunks=100, chunk_delay_s=0.05)) as node:
            await register(session, router.url, node)
            resp = await session.post(router.url + CHAT, json=_chat(stream=True))
            await resp.content.readline()
            assert _in_flight(router) == 1
            resp.close()
            await node.wait_for(lambda n: n.cancelled == 1)
            await _settle(router)
        assert node.cancelled == 1
        assert _in_flight(router) == 0


class TestHeaders:
    """Correlation and tenant headers travel to the node; the answer names node and id."""

    async def test_headers_forwarded_and_echoed(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Octopus headers reach the node; a correlation id is made when none came."""
        async with running(FakeNode("n")) as node:
            await register(session, router.url, node)
            headers = {"X-Octopus-Tenant-Id": "acme", "X-Octopus-Correlation-Id": "episode-1"}
            async with session.post(router.url + CHAT, json=_chat(), headers=headers) as resp:
                assert resp.headers["X-Correlation-Id"] == "episode-1"
                assert resp.headers["X-Inference-Node"] == "n"
            async with session.post(router.url + CHAT, json=_chat()) as resp:
                made = resp.headers["X-Correlation-Id"]
        assert len(made) >= 16
        first, second = node.seen
        assert first["headers"]["X-Octopus-Tenant-Id"] == "acme"
        assert first["headers"]["X-Octopus-Correlation-Id"] == "episode-1"
        assert second["headers"]["X-Octopus-Correlation-Id"] == made

    async def test_url_shapes(self, router: RunningRouter, session: aiohttp.ClientSession) -> None:
        """/{group}/v1/..., /{group}/... and /v1/... (default group) all reach the group."""
        async with running(FakeNode("n")) as node:
            await register(session, router.url, node)
            for path in (CHAT, "/inference-cluster/chat/completions", "/v1/chat/completions"):
                assert await _served_by(session, router.url + path, _chat()) == "n"
            async with session.get(router.url + "/inference-cluster/v1/models") as resp:
                ids = [m["id"] for m in (await resp.json())["data"]]
        assert ids == ["m-small"]


async def _settle(router: RunningRouter) -> None:
    """Let the router's cancelled handler run its cleanup (bounded)."""
    async with asyncio.timeout(5):
        while _in_flight(router):  # noqa: ASYNC110 - the router exposes no event for this
            await asyncio.sleep(0.01)
