"""A node that dies mid-stream loses no answer where another node can continue it. Per engine
kind that can, on an emulated cluster (router, two emulated backends of that kind with an agent
beside each, real sockets): the backend of one node drops its streams after a few tokens, the
agent ends them with its cut event, and the router goes on at the other node. The emulated
model writes the same words whatever node writes them, so the client's answer must be the
uninterrupted one word for word: the resumed text starts exactly where the cut one stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from bench.emulator.tokens import token_text
from bench.llamacpp.servers import wait_ready
from node_agent.app import serve as serve_agent
from router.app import serve as serve_router
from tests.conftest import router_settings
from tests.e2e.conftest import GROUP, agent_settings

MODEL = "llama3.1:8b"
N = 12  # tokens in each answer
CUT = 3  # tokens the dying node sends
CLIENTS = 4
WHOLE = "".join(token_text(i) for i in range(N))


@dataclass
class Pair:
    """Two nodes of one kind serving MODEL; ``dying`` drops every stream after CUT tokens."""

    router_url: str
    dying: str

    @property
    def group_url(self) -> str:
        return f"{self.router_url}/{GROUP}"

    async def resumed(self, session: aiohttp.ClientSession) -> float:
        async with session.get(self.router_url + "/metrics") as resp:
            text = await resp.text()
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "router_streams_resumed_total" and s.labels["node"] == "dying"
        )


@contextlib.asynccontextmanager
async def pair(kind: str) -> AsyncIterator[Pair]:
    # Slow enough (2.4 s an answer) that the clients' streams overlap however busy the machine
    # is. Round robin sends every other one to the dying node: least_loaded sent all four to
    # the other one on a busy machine (both nodes had free slots, and the dying one's report
    # was late), and nothing was cut.
    config = EmulatorConfig(kind=kind, models=(MODEL,), tok_s=5.0, ttft_s=0.01, slots=8)
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        settings = router_settings(default_policy="round_robin")
        router = await stack.enter_async_context(serve_router(settings))
        urls = {}
        for name in ("dying", "well"):
            emu = await stack.enter_async_context(serve_emulator(config))
            if kind == "llamacpp":
                await asyncio.wait_for(wait_ready(emu.url), 5)
            urls[name] = emu.url
            await stack.enter_async_context(serve_agent(agent_settings(name, emu.url, router.url)))
        fault = {"mode": "die_mid_stream", "after": CUT}
        async with session.post(urls["dying"] + "/_emulator/faults", json=fault) as resp:
            assert resp.status == 200
        async with asyncio.timeout(15):
            while True:
                async with session.get(f"{router.url}/api/server-groups/{GROUP}/nodes") as resp:
                    nodes = (await resp.json())["nodes"]
                if {n["name"] for n in nodes if n["status"] == "healthy"} == {"dying", "well"}:
                    break
                await asyncio.sleep(0.1)
        yield Pair(router.url, urls["dying"])


async def openai_chat(base: str, i: int) -> str:
    """One streamed chat through the official SDK: its text, checked to be one stream (one id,
    at most one role, one finish, usage for all of it)."""
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="-", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == N
    return "".join(d.delta.content or "" for d in deltas)


async def openai_completion(base: str, i: int) -> str:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="-", max_retries=0) as client:
        stream = await client.completions.create(
            model=MODEL, prompt=f"question {i}", max_tokens=N, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    return "".join(c.choices[0].text for c in chunks if c.choices)


def ollama_native(path: str, body: dict[str, Any]) -> Callable[[str, int], Awaitable[str]]:
    async def ask(base: str, i: int) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + path, json={**body, "model": MODEL}) as resp,
        ):
            assert resp.status == 200
            lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
        assert not any("error" in line for line in lines)
        assert lines[-1]["done"] is True
        assert lines[-1]["eval_count"] == N
        return "".join(
            line.get("response") or line.get("message", {}).get("content", "") for line in lines
        )

    return ask


CASES = [
    ("vllm", openai_chat),
    ("tgi", openai_chat),
    ("ollama", openai_chat),
    ("llamacpp", openai_chat),
    ("vllm", openai_completion),
]


@pytest.mark.parametrize(("kind", "ask"), CASES, ids=lambda v: getattr(v, "__name__", v))
async def test_a_cut_answer_goes_on_word_for_word(
    kind: str, ask: Callable[[str, int], Awaitable[str]]
) -> None:
    """Streams cut on the dying node are resumed on the other: every client gets the whole,
    uninterrupted answer as one valid stream, and at least one was resumed."""
    async with pair(kind) as cluster, aiohttp.ClientSession() as session:
        texts = await asyncio.gather(*(ask(cluster.group_url, i) for i in range(CLIENTS)))
        resumed = await cluster.resumed(session)
    assert texts == [WHOLE] * CLIENTS
    assert resumed >= 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "q"}], "options": {"num_predict": N}},
        ),
        (
            "/api/generate",
            {"prompt": "[INST] q [/INST]", "raw": True, "options": {"num_predict": N}},
        ),
    ],
)
async def test_ollama_native_streams_go_on_word_for_word(path: str, body: dict[str, Any]) -> None:
    """Ollama's own chat and raw generate streams are resumed the same way."""
    ask = ollama_native(path, body)
    async with pair("ollama") as cluster, aiohttp.ClientSession() as session:
        texts = await asyncio.gather(*(ask(cluster.group_url, i) for i in range(CLIENTS)))
        resumed = await cluster.resumed(session)
    assert texts == [WHOLE] * CLIENTS
    assert resumed >= 1
