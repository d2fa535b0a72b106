"""The agent's prompt caches over real sockets: what it relays is recorded, what the engine says
it reused corrects the estimate, and the load report carries the summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from node_agent.app import RunningAgent, serve
from node_agent.prefix_index import SHRINK
from node_agent.prompt_caches import CHARS_PER_TOKEN
from node_protocol.prompt_prefix import fingerprint
from node_protocol.wire import LoadReport

from .conftest import ServerFactory, agent_settings, base_url, wait_until

MODEL = "tiny-q4"
SLOTS, CONTEXT = 2, 4096
SYSTEM = "You are a careful assistant who answers in one word. " * 60


@dataclass
class Engine:
    """A llama.cpp-like server: its answers say how many prompt tokens came from its cache."""

    cached_share: float = 1.0  # what it says it reused, of each prompt after its first
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": MODEL, "object": "model", "owned_by": "llamacpp", "context_length": CONTEXT}
        return web.json_response({"object": "list", "data": [card]})

    def counts(self, body: dict[str, Any]) -> tuple[int, int]:
        """Its first prompt came from no cache; later ones at ``cached_share``."""
        prompt = len(orjson.dumps(body["messages"])) // CHARS_PER_TOKEN
        first = body is self.bodies[0]
        return prompt, 0 if first else int(prompt * self.cached_share)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") == "missing":
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        self.bodies.append(body)
        prompt, cached = self.counts(body)
        if not body.get("stream"):
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            message = {"role": "assistant", "content": "Yes"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response({"choices": [choice], "usage": usage, "model": MODEL})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delta = {"index": 0, "delta": {"content": "Yes"}, "finish_reason": "stop"}
        timings = {"cache_n": cached, "prompt_n": prompt - cached, "predicted_n": 1}
        for event in ({"choices": [delta]}, {"choices": [], "timings": timings}):
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
async def engine_agent(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[Engine, RunningAgent]]:
    engine = Engine()
    server = await aiohttp_server(engine.app())
    settings = agent_settings(base_url(server), backend_kind="openai", max_parallel=SLOTS)
    async with serve(settings) as agent:
        await wait_until(lambda: agent.reporter.latest is not None)
        yield engine, agent


def chat(question: str, *, stream: bool, model: str = MODEL) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": model, "messages": messages, "stream": stream}


async def ask(agent: RunningAgent, path: str, body: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{agent.local_url}{path}", json=body) as resp,
    ):
        await resp.read()
        return resp.status


async def report(agent: RunningAgent) -> LoadReport:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{agent.local_url}/status") as resp,
    ):
        return LoadReport.from_json(await resp.json())


class TestRecording:
    """What the engine takes is recorded and reported."""

    async def test_relayed_prompts_are_in_the_report(
        self, engine_agent: tuple[Engine, RunningAgent]
    ) -> None:
        """Two questions after one system prompt: the report holds both prompts whole, under
        the model's name, sized from its context times its slots."""
        _, agent = engine_agent
        bodies = [chat("Sky blue?", stream=True), chat("Grass red?", stream=False)]
        for body in bodies:
            assert await ask(agent, "/v1/chat/completions", body) == 200
        await wait_until(
            lambda: bool(agent.reporter.latest and agent.reporter.latest.prefix_caches)
        )
        (summary,) = (await report(agent)).prefix_caches
        assert summary.model == MODEL
        assert summary.capacity_chars == SLOTS * CONTEXT * CHARS_PER_TOKEN
        for body in bodies:
            fp = fingerprint(body)
            assert summary.prefix_chars(fp) == fp.chars

    async def test_a_refused_request_is_not_recorded(
        self, engine_agent: tuple[Engine, RunningAgent]
    ) -> None:
        """An engine's error answer filled no cache: nothing is recorded for it."""
        _, agent = engine_agent
        status = await ask(agent, "/v1/chat/completions", chat("?", stream=False, model="missing"))
        assert status == 404
        assert agent.prompts.models() == {}

    async def test_the_prompt_shape_of_infer_is_recorded(
        self, engine_agent: tuple[Engine, RunningAgent]
    ) -> None:
        """``/infer`` with ``{prompt}``: recorded as the body the router saw."""
        engine, agent = engine_agent
        body = {"prompt": SYSTEM + "Sky blue?", "maxTokens": 4}
        assert await ask(agent, "/infer", body) == 200
        (cache,) = agent.prompts.models().values()
        fp = fingerprint(body)
        assert cache.index.held_chars(fp) == fp.chars
        assert cache.engine_prompt_tokens == engine.counts(engine.bodies[0])[0]


class TestCorrection:
    """The engine's counts in its answers correct the agent's estimate."""

    @pytest.mark.parametrize("stream", [True, False])
    async def test_an_engine_that_kept_nothing_shrinks_the_index(
        self, engine_agent: tuple[Engine, RunningAgent], stream: bool
    ) -> None:
        """The same prompt twice, the engine saying it reused none of it the second time
        (llama.cpp's ``timings.cache_n`` streamed, OpenAI's ``cached_tokens`` whole): the
        index's capacity shrinks and the engine's cached ratio reads 0."""
        engine, agent = engine_agent
        engine.cached_share = 0.0
        for _ in range(2):
            assert await ask(agent, "/v1/chat/completions", chat("Again?", stream=stream)) == 200
        (cache,) = agent.prompts.models().values()
        assert cache.index.scale == SHRINK
        assert cache.engine_cached_ratio == 0.0
        await wait_until(lambda: _ratio(agent) == 0.0)

    async def test_an_engine_that_kept_it_all_confirms_the_index(
        self, engine_agent: tuple[Engine, RunningAgent]
    ) -> None:
        """The engine reused what the index predicted: no correction, and the metrics show
        the engine's cached tokens."""
        engine, agent = engine_agent
        engine.cached_share = 1.0
        assert await ask(agent, "/v1/chat/completions", chat("Once?", stream=True)) == 200
        engine.cached_share = 0.99
        assert await ask(agent, "/v1/chat/completions", chat("Once?", stream=True)) == 200
        (cache,) = agent.prompts.models().values()
        assert cache.index.scale == 1.0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{agent.local_url}/metrics") as resp,
        ):
            text = await resp.text()
        cached = cache.engine_cached_tokens
        assert cached > 0
        assert f'node_agent_engine_cached_prompt_tokens_total{{model="{MODEL}"}} {cached}.0' in text


def _ratio(agent: RunningAgent) -> float | None:
    latest = agent.reporter.latest
    if latest is None or not latest.prefix_caches:
        return None
    return latest.prefix_caches[0].engine_cached_ratio
