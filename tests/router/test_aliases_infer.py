"""Model aliases across backends, and the Octopus /infer endpoint in both shapes."""

from __future__ import annotations

import aiohttp
import orjson

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

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
