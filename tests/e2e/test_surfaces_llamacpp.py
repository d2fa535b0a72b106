"""The ``anthropic`` SDK and the ``openai`` SDK's Responses API through the router and agents
against real ``llama-server`` s (two, a tiny random-weight model each), which speak both surfaces
themselves: the agents learn it and pass the requests through.

Needs llama.cpp's build (``bench/llamacpp/build.sh``) and its launch helpers
(``bench.llamacpp.servers``, ``bench.llamacpp.model``); without them the module is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from node_agent.app import RunningAgent
from node_agent.app import serve as serve_agent
from node_agent.settings import AgentSettings
from node_agent.surfaces import MESSAGES_PATH, RESPONSES_PATH, SURFACES
from router.app import RunningRouter
from router.app import serve as serve_router
from tests.conftest import router_settings
from tests.e2e.conftest import GROUP

servers = pytest.importorskip("bench.llamacpp.servers", reason="llama.cpp launch helpers")
model_files = pytest.importorskip("bench.llamacpp.model", reason="llama.cpp's tiny model")
paths = pytest.importorskip("bench.llamacpp.paths", reason="llama.cpp's build")

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "tiny"  # the alias the launch helper gives the model
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Fleet:
    router: RunningRouter
    agents: list[RunningAgent]

    @property
    def anthropic_url(self) -> str:
        return f"{self.router.url}/{GROUP}"

    @property
    def openai_url(self) -> str:
        return f"{self.router.url}/{GROUP}/v1"


async def wait_healthy(router: RunningRouter, names: set[str]) -> None:
    url = f"{router.url}/api/server-groups/{GROUP}/nodes"
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as resp:
                states = {n["name"]: n["status"] for n in (await resp.json())["nodes"]}
            if all(states.get(name) == "healthy" for name in names):
                return
            await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    try:
        paths.server_binary()
    except paths.NotBuiltError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("llamacpp")
    gguf = model_files.ensure()
    async with contextlib.AsyncExitStack() as stack:
        router = await stack.enter_async_context(serve_router(router_settings()))
        agents = []
        for n in (1, 2):
            engine = servers.llama_server(gguf, context=4096, log_path=folder / f"{n}.log")
            await engine.start()
            stack.push_async_callback(engine.stop)
            settings = AgentSettings(
                backend_url=engine.url,
                router_urls=(router.url,),
                group=GROUP,
                name=f"llama-{n}",
                host="127.0.0.1",
                port=0,
                gpu_source="none",  # llama-server runs on the CPU here
                report_interval_s=0.2,
            )
            agents.append(await stack.enter_async_context(serve_agent(settings)))
        await wait_healthy(router, {"llama-1", "llama-2"})
        yield Fleet(router, agents)


async def test_agents_pass_both_surfaces_through(fleet: Fleet) -> None:
    """Each agent finds that its llama-server speaks Messages and Responses itself."""
    for agent in fleet.agents:
        assert await agent.app[SURFACES].serves(MESSAGES_PATH)
        assert await agent.app[SURFACES].serves(RESPONSES_PATH)


async def test_anthropic_sync_with_a_tool(fleet: Fleet) -> None:
    """The sync client, a tool declared: a message of exactly max_tokens tokens (the tiny model
    never ends early), with llama-server's counts."""
    client = anthropic.Anthropic(base_url=fleet.anthropic_url, api_key="k", max_retries=0)

    def create() -> anthropic.types.Message:
        return client.messages.create(model=MODEL, max_tokens=6, messages=HELLO, tools=[WEATHER])

    try:
        message = await asyncio.to_thread(create)
    finally:
        client.close()
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6
    assert message.usage.input_tokens > 0


async def test_anthropic_async_and_streamed(fleet: Fleet) -> None:
    """The async client: a whole message with a system prompt, then a stream whose text
    events make its final message."""
    async with anthropic.AsyncAnthropic(base_url=fleet.anthropic_url, api_key="k") as client:
        whole = await client.messages.create(
            model=MODEL, max_tokens=4, system="Be brief.", messages=HELLO
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=8, messages=HELLO, tools=[WEATHER]
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert whole.usage.output_tokens == 4
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert (final.stop_reason, final.usage.output_tokens) == ("max_tokens", 8)


async def test_bad_messages_body_never_reaches_llama_server(fleet: Fleet) -> None:
    """llama-server would generate for a Messages body without max_tokens (and answer 500 for
    one without messages): the router refuses both with Anthropic's 400 and no agent sees
    them."""
    before = [agent.stats.requests_total for agent in fleet.agents]
    url = f"{fleet.anthropic_url}/v1/messages"
    async with aiohttp.ClientSession() as session:
        for body in ({"model": MODEL, "messages": HELLO}, {"model": MODEL, "max_tokens": 4}):
            async with session.post(url, json=body) as resp:
                assert resp.status == 400
                answer = await resp.json()
                assert answer["type"] == "error"
                assert answer["error"]["type"] == "invalid_request_error"
    assert [agent.stats.requests_total for agent in fleet.agents] == before


async def test_openai_responses_whole_and_streamed(fleet: Fleet) -> None:
    """``client.responses.create``, whole and streamed, against llama-server's own route."""
    async with openai.AsyncOpenAI(base_url=fleet.openai_url, api_key="k") as client:
        whole = await client.responses.create(
            model=MODEL, input="Hello there", instructions="Be brief.", max_output_tokens=5
        )
        stream = await client.responses.create(
            model=MODEL, input=HELLO, max_output_tokens=7, stream=True
        )
        deltas, final = [], None
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
    assert whole.object == "response"
    assert whole.usage is not None
    assert whole.usage.output_tokens == 5
    assert whole.output_text
    assert final is not None
    assert final.output_text == "".join(deltas)
    assert final.usage is not None
    assert final.usage.output_tokens == 7
