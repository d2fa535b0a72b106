"""Model aliases across backends, and the Octopus /infer endpoint in both shapes."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, report, running

GROUP = "/inference-cluster"


class TestAliases:
    """A logical model id reaches nodes that know it by another name, and the client sees the
    name it asked for."""

    async def test_alias_in_and_out(self, session: aiohttp.ClientSession) -> None:
        """The node gets its own name in the body; the answer (plain and streamed) carries the
        client's name."""
        settings = router_settings(aliases={"llama3.1:70b": ("meta-llama/Llama-3.1-70B",)})
        async with (
            serve(settings) as router,
            running(FakeNode("vllm-1", models=("meta-llama/Llama-3.1-70B",))) as node,
        ):
            await register(session, router.url, node)
            body = {"model": "llama3.1:70b", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(f"{router.url}{GROUP}/v1/chat/completions", json=body) as r:
                assert r.status == 200
                assert (await r.json())["model"] == "llama3.1:70b"
            body["stream"] = True
            async with session.post(f"{router.url}{GROUP}/v1/chat/completions", json=body) as r:
                raw = await r.read()
        assert node.seen[0]["body"]["model"] == "meta-llama/Llama-3.1-70B"
        assert b'"model":"llama3.1:70b"' in raw
        assert b"meta-llama" not in raw


async def register_cold(
    session: aiohttp.ClientSession, router_url: str, node: FakeNode, entry: dict[str, Any]
) -> None:
    """Register ``node`` as an agent would, listing one model (``entry``) not loaded."""
    body = {"name": node.name, "baseUrl": node.url, "report": report(())}
    body["report"]["models"] = [entry | {"loaded": False, "maxParallel": 4}]
    url = f"{router_url}/api/server-groups/inference-cluster/nodes"
    async with session.post(url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()


class TestAliasAccounting:
    """The router counts a model's requests on a node under one name, whichever name each
    request asked for."""

    @pytest.mark.parametrize(
        ("table", "entry", "first", "second"),
        [
            (  # the router's alias table: the node knows the model by another name
                {"llama3.1:70b": ("meta-llama/Llama-3.1-70B",)},
                {"id": "meta-llama/Llama-3.1-70B"},
                "llama3.1:70b",
                "llama3.1:70b",
            ),
            (  # the node's own alias: two requests name the model two ways
                {},
                {"id": "llama3:latest", "aliases": ["llama3"]},
                "llama3:latest",
                "llama3",
            ),
        ],
        ids=["router-alias", "node-alias"],
    )
    async def test_model_loading_for_our_request_is_warm(
        self,
        session: aiohttp.ClientSession,
        table: dict[str, tuple[str, ...]],
        entry: dict[str, Any],
        first: str,
        second: str,
    ) -> None:
        """Two nodes list the model, not loaded. While the router's first request holds one
        of them (loading the model there), the next request goes to the same node: the
        scheduler sees the model warm there, not cold on both (a second load elsewhere)."""
        settings = router_settings(aliases=table, report_interval_s=5.0)
        async with AsyncExitStack() as stack:
            router = await stack.enter_async_context(serve(settings))
            for name in ("node-a", "node-b"):
                node = FakeNode(name, chunks=4, chunk_delay_s=0.25)
                await stack.enter_async_context(running(node))
                await register_cold(session, router.url, node, entry)
            url = f"{router.url}{GROUP}/v1/chat/completions"
            messages = [{"role": "user", "content": "x"}]
            body = {"model": first, "messages": messages, "stream": True}
            async with session.post(url, json=body) as held:
                assert held.status == 200
                loading = held.headers["X-Inference-Node"]
                async with (
                    asyncio.timeout(10),
                    session.post(url, json={"model": second, "messages": messages}) as r,
                ):
                    assert r.status == 200
                    assert r.headers["X-Inference-Node"] == loading
                await held.read()


class TestInfer:
    """/{group}/infer takes a chat body, or {prompt, maxTokens} answered as {text, tokensUsed,
    model}."""

    async def test_prompt_shape(self, session: aiohttp.ClientSession) -> None:
        """A prompt-shaped call becomes a chat completion on the group's only model."""
        async with serve(router_settings()) as router, running(FakeNode("n", chunks=3)) as node:
            await register(session, router.url, node)
            async with session.post(
                f"{router.url}{GROUP}/infer", json={"prompt": "Hello", "maxTokens": 7}
            ) as r:
                assert r.status == 200
                answer = await r.json()
        assert answer == {"text": "hi hi hi ", "tokensUsed": 0, "model": "m-small"}
        sent = node.seen[0]["body"]
        assert sent["messages"] == [{"role": "user", "content": "Hello"}]
        assert sent["max_tokens"] == 7

    async def test_chat_shape_streams(self, session: aiohttp.ClientSession) -> None:
        """A chat-shaped call is a chat completion, streamed as event-stream."""
        async with serve(router_settings()) as router, running(FakeNode("n", chunks=3)) as node:
            await register(session, router.url, node)
            body = {
                "model": "m-small",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            }
            async with session.post(f"{router.url}{GROUP}/infer", json=body) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                raw = await r.read()
        assert raw.endswith(b"data: [DONE]\n\n")

    async def test_bad_prompt_is_400(self, session: aiohttp.ClientSession) -> None:
        """Neither messages nor a prompt answers 400 naming 'prompt'."""
        async with (
            serve(router_settings()) as router,
            session.post(f"{router.url}{GROUP}/infer", json={"x": 1}) as r,
        ):
            assert r.status == 400
            assert orjson.loads(await r.read())["error"]["param"] == "prompt"
