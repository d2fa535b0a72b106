"""End to end over real sockets: OpenAI SDK -> router -> node agent -> emulated backend."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import openai

from tests.e2e.conftest import GROUP, LocalCluster

HELLO = [{"role": "user", "content": "Hello"}]


async def _backend_requests(session: aiohttp.ClientSession, emulator_url: str) -> list[dict]:  # type: ignore[type-arg]
    async with session.get(f"{emulator_url}/_emulator/requests") as resp:
        return list((await resp.json())["requests"])


class TestOpenAIClient:
    """The official SDK pointed at the group URL lists models and chats, plain and streamed."""

    async def test_models_chat_and_stream(self, cluster: LocalCluster) -> None:
        """Models are the union of the nodes'; a plain and a streamed chat both succeed, the
        stream in several chunks ending cleanly; the backend sees the tenant as X-Tenant-Id."""
        client = openai.AsyncOpenAI(
            base_url=cluster.base_url,
            api_key="unused",
            default_headers={"X-Octopus-Tenant-Id": "tenant-a"},
        )
        try:
            models = sorted(m.id for m in (await client.models.list()).data)
            assert {"llama3.1:8b", "llama2:13b", "llama3.1:70b"} <= set(models)

            reply = await client.chat.completions.create(
                model="llama3.1:70b",
                messages=HELLO,
                max_tokens=8,  # type: ignore[arg-type]
            )
            assert reply.choices[0].message.content
            assert reply.model == "llama3.1:70b"

            stream = await client.chat.completions.create(
                model="llama3.1:70b",
                messages=HELLO,  # type: ignore[arg-type]
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces = []
            finish = None
            usage = None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                    finish = choice.finish_reason or finish
        finally:
            await client.close()
        assert len(pieces) >= 5
        assert finish == "length"
        assert usage is not None
        assert usage.completion_tokens == 12
        async with aiohttp.ClientSession() as session:
            seen = await _backend_requests(session, cluster.emulators["gpu-box-3"].url)
        chats = [r for r in seen if r["path"] == "/v1/chat/completions"]
        assert chats
        assert all(r["headers"].get("x-tenant-id") == "tenant-a" for r in chats)
        assert all(r["headers"].get("x-correlation-id") for r in chats)


class TestSpread:
    """A model on two nodes is spread by load; a model on one node goes only there."""

    async def test_requests_follow_models_and_load(self, cluster: LocalCluster) -> None:
        """Concurrent 13B requests use both 13B nodes; 70B requests only the 70B node."""
        url = f"{cluster.router.url}/{GROUP}/v1/chat/completions"

        async def one(session: aiohttp.ClientSession, model: str) -> str:
            body = {"model": model, "messages": HELLO, "max_tokens": 16, "stream": True}
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
                await resp.read()
                return resp.headers["X-Inference-Node"]

        async with aiohttp.ClientSession() as session:
            thirteen = await asyncio.gather(*(one(session, "llama2:13b") for _ in range(16)))
            seventy = await asyncio.gather(*(one(session, "llama3.1:70b") for _ in range(4)))
        spread = Counter(thirteen)
        assert set(spread) == {"gpu-box-1", "gpu-box-2"}
        assert min(spread.values()) >= 4
        assert set(seventy) == {"gpu-box-3"}


class TestFailures:
    """A dead backend is taken out within seconds and re-admitted when back; a restarted
    router is re-joined by the agents on their own."""

    async def test_backend_killed_and_back(self, cluster: LocalCluster) -> None:
        """Requests keep succeeding while a 13B backend is down (retried elsewhere)."""
        url = f"{cluster.router.url}/{GROUP}/v1/chat/completions"
        body = {"model": "llama2:13b", "messages": HELLO, "max_tokens": 4}
        async with aiohttp.ClientSession() as session:
            await cluster.stop_emulator("gpu-box-2")
            statuses = []
            for _ in range(10):
                async with session.post(url, json=body) as resp:
                    statuses.append((resp.status, resp.headers.get("X-Inference-Node")))
            took = await cluster.wait_states(session, {"gpu-box-2": "unhealthy"})
            assert took < 5.0
            assert all(status == 200 for status, _ in statuses)
            assert all(node == "gpu-box-1" for _, node in statuses)
            await cluster.start_emulator("gpu-box-2")
            await cluster.wait_states(session, {"gpu-box-2": "healthy"})

    async def test_router_restart(self, cluster: LocalCluster) -> None:
        """After the router restarts empty on the same port, every agent re-registers by
        itself within seconds, and requests flow again."""
        await cluster.restart_router()
        async with aiohttp.ClientSession() as session:
            assert await cluster.node_states(session) == {}
            took = await cluster.wait_states(
                session, dict.fromkeys(cluster.agents, "healthy"), limit_s=10.0
            )
            url = f"{cluster.router.url}/{GROUP}/v1/chat/completions"
            body = {"model": "llama3.1:8b", "messages": HELLO, "max_tokens": 4}
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
        assert took < 5.0
