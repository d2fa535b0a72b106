"""A generic OpenAI-compatible backend, whose parallelism cannot be learned, is not sent more
requests than it is assumed (or configured) to serve at once, nor probed while it serves."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from node_agent.app import serve

from .conftest import FakeBackend, agent_settings, wait_until

STREAM = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
Served = tuple[FakeBackend, str]


async def _status(client: aiohttp.ClientSession, agent_url: str) -> dict[str, object]:
    async with client.get(f"{agent_url}/status") as r:
        body: dict[str, object] = await r.json()
        return body


class TestAssumedParallelism:
    async def test_unknown_parallelism_is_assumed_one_and_the_agent_says_how_to_set_it(
        self, generic: Served, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing tells how many requests the server takes: one is reported, and the agent
        logs what it assumed and the setting that overrides it."""
        caplog.set_level(logging.WARNING, logger="node_agent.backends")
        async with serve(agent_settings(generic[1])) as agent, aiohttp.ClientSession() as c:
            await wait_until(lambda: bool(agent.reporter.latest and agent.reporter.latest.models))
            models = (await _status(c, agent.url))["models"]
        assert isinstance(models, list)
        assert [m["maxParallel"] for m in models] == [1]
        said = [r.getMessage() for r in caplog.records if "--max-parallel" in r.getMessage()]
        assert len(said) == 1
        assert "assuming it serves 1 request at a time" in said[0]

    async def test_configured_parallelism_is_taken_as_is(
        self, generic: Served, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``--max-parallel 3``: three are reported and nothing is assumed."""
        caplog.set_level(logging.WARNING, logger="node_agent.backends")
        settings = agent_settings(generic[1], max_parallel=3)
        async with serve(settings) as agent, aiohttp.ClientSession() as c:
            await wait_until(lambda: bool(agent.reporter.latest and agent.reporter.latest.models))
            models = (await _status(c, agent.url))["models"]
        assert isinstance(models, list)
        assert [m["maxParallel"] for m in models] == [3]
        assert not [r for r in caplog.records if "--max-parallel" in r.getMessage()]


class TestOneAtATime:
    async def test_second_request_waits_at_the_agent_until_the_first_ends(
        self, generic: Served
    ) -> None:
        """Two streams arrive together: the backend gets the second only once the first has
        ended, and both are answered in full."""
        fake, url = generic
        fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            first = await client.post(f"{agent.url}/v1/chat/completions", json=STREAM)
            await fake.state.first_sent.wait()
            second = asyncio.create_task(
                client.post(f"{agent.url}/v1/chat/completions", json=STREAM)
            )
            await wait_until(lambda: agent.stats.in_flight == 2)
            await asyncio.sleep(0.2)  # time for the backend to get it, were it sent
            assert fake.state.streaming == 1
            fake.state.gate.set()
            bodies = [await first.read(), await (await second).read()]
        assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
        assert fake.state.most_streaming == 1

    async def test_backend_is_not_probed_while_it_serves(self, generic: Served) -> None:
        """While a stream is in flight the agent sends the backend no ``GET /v1/models`` (on
        such a server that would cut the stream); after it, probing resumes."""
        fake, url = generic
        fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            await wait_until(lambda: fake.state.models_asked > 0)
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                await fake.state.first_sent.wait()
                asked = fake.state.models_asked
                await asyncio.sleep(0.3)  # six report intervals
                assert fake.state.models_asked == asked
                fake.state.gate.set()
                await r.read()
            await wait_until(lambda: fake.state.models_asked > asked)
