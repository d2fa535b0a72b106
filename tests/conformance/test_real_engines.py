"""Conformance, what only the real llama.cpp servers show: the agent's view of llama-server,
and llama-cpp-python's server, which cuts its running request short when another arrives."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from .client import CORRELATION, NODE, StreamReader, chat, new_id, stream
from .fleet import Fleet, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

LLAMA_SERVER = [pytest.param("llama-server", id="llama-server")]
PYTHON_SERVER = [pytest.param("llama-cpp-python", id="llama-cpp-python")]


async def _model_report(fleet: Fleet, http: aiohttp.ClientSession, node: str) -> dict[str, Any]:
    status = await fleet.agent_status(http, node)
    (model,) = status["models"]
    return status | {"model": model}


async def _until_queue(
    fleet: Fleet, http: aiohttp.ClientSession, node: str, wanted: tuple[int, int]
) -> None:
    """Wait until the node's agent reports ``wanted`` (running, waiting) at its engine: a
    report carries the queue as the agent last read it."""
    seen: list[tuple[int, int]] = []

    async def reported() -> bool:
        report = await fleet.agent_status(http, node)
        seen.append((report["queueRunning"], report["queueWaiting"]))
        return seen[-1] == wanted

    try:
        await until(reported, 10.0)
    except TimeoutError:
        pytest.fail(f"{node}: (running, waiting) seen: {sorted(set(seen))}")


@pytest.mark.parametrize("fleet", LLAMA_SERVER, indirect=True)
async def test_agent_reports_llama_server_slots_context_and_version(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """The agent detects llama-server and reports its slots as the model's parallel requests,
    one slot's context as the context length, its build and, once the engine is idle, an idle
    queue. (A report carries the engine's state as the agent last read it, which may be from
    the previous test's stream, so the queue is waited for.)"""
    for node in fleet.engines:
        report = await _model_report(fleet, http, node)
        assert report["backendKind"] == "llamacpp"
        assert str(report["backendVersion"]).startswith("b")
        model = report["model"]
        assert (model["id"], model["maxParallel"], model["contextLength"]) == ("tiny", 2, 4096)
        await _until_queue(fleet, http, node, (0, 0))


@pytest.mark.parametrize("fleet", LLAMA_SERVER, indirect=True)
async def test_agent_reports_llama_server_queue_while_requests_wait_inside_it(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Three long requests sent to a two-slot server (not through the router): the agent
    reports two running and one deferred."""
    node, engine = next(iter(fleet.engines.items()))
    url = f"{engine.url}/v1/chat/completions"
    sent = [
        asyncio.create_task(http.post(url, json=chat(fleet.model, 3000, stream=True)))
        for _ in range(3)
    ]
    try:
        await _until_queue(fleet, http, node, (2, 1))
    finally:
        for task in sent:
            task.cancel()
        for response in await asyncio.gather(*sent, return_exceptions=True):
            if isinstance(response, aiohttp.ClientResponse):
                response.close()


@pytest.mark.parametrize("fleet", LLAMA_SERVER, indirect=True)
async def test_agent_reports_llama_server_prompt_cache_counters(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """The same conversation twice on one node: the prompt-cache counter the agent reports
    grows by the prompt the second request took from the cache."""
    node = next(iter(fleet.engines))
    before = await fleet.agent_status(http, node)
    body = chat(fleet.model, 4)
    body["messages"][0]["content"] = "A long shared system prompt about the sea. " * 20
    for _ in range(2):
        async with http.post(f"{fleet.engines[node].url}/v1/chat/completions", json=body) as r:
            assert r.status == 200

    async def counted() -> bool:
        after = await fleet.agent_status(http, node)
        return bool(after["cachedPromptTokens"] > before["cachedPromptTokens"] + 100)

    await until(counted, 5.0)


@pytest.mark.parametrize("fleet", PYTHON_SERVER, indirect=True)
async def test_agent_assumes_one_request_at_a_time_and_says_how_to_change_it(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """llama-cpp-python's server does not tell its parallelism: the agent reports one slot
    and its log says so, naming the setting that changes it."""
    for node, log in fleet.agent_logs.items():
        report = await _model_report(fleet, http, node)
        assert report["backendKind"] == "openai"
        assert report["model"]["maxParallel"] == 1
        text = log.read_text()
        assert "assuming it serves 1 request at a time" in text
        assert "--max-parallel" in text


@pytest.mark.parametrize("fleet", PYTHON_SERVER, indirect=True)
async def test_sixteen_concurrent_streams_to_the_python_server_all_carry_content(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Sixteen streams at once through router and agents to llama-cpp-python's server (which
    cuts its running request short when another arrives): every one is answered in full."""
    url = f"{fleet.base_url}/chat/completions"
    answers = await asyncio.gather(
        *(stream(http, url, chat(fleet.model, 16, stream=True)) for _ in range(16))
    )
    assert [a.status for a in answers] == [200] * 16
    assert [len(a.pieces) for a in answers] == [16] * 16
    assert all(a.served for a in answers), [a.events[-2:] for a in answers if not a.served]


@pytest.mark.parametrize("fleet", PYTHON_SERVER, indirect=True)
async def test_stream_the_engine_cuts_short_goes_on_at_the_other_engine(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Another client's request on the same llama-cpp-python server ends a stream in flight
    early (with ``[DONE]`` but no finish reason): the router takes that for a cut, not a whole
    answer, and the client's stream goes on at the other engine and ends whole."""
    cid = new_id()
    body = chat(fleet.model, 3000, stream=True)
    url = f"{fleet.base_url}/chat/completions"
    async with http.post(url, json=body, headers={CORRELATION: cid}) as resp:
        reader = StreamReader(resp)
        first = await reader.first_content()
        assert first.pieces, first.events
        engine = fleet.engines[str(resp.headers[NODE])]
        async with http.post(f"{engine.url}/v1/chat/completions", json=chat(fleet.model, 2)):
            pass
        answer = await reader.to_end()
    assert not answer.errors, answer.events[-3:]
    assert answer.finish_reasons
    assert answer.done
    assert (await fleet.record(cid))["resumed"] == 1
