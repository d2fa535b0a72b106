"""Conformance, failures: disconnects, engines dying and coming back, prompts too long.

A test that kills an engine starts it again on the same port before it ends (its agent is never
restarted), so the fleet is whole for the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .client import CORRELATION, NODE, Stream, StreamReader, chat, new_id, stream
from .engines import CONTEXT_LIMIT, CONTINUES, SLOTS, engines, engines_lacking
from .fleet import Fleet, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

LONG = 4000  # output tokens: a stream that lasts seconds on every engine here
# Output tokens of a stream killed to be resumed: still seconds on every engine, and short
# enough that the rest, generated again on the other engine, ends within the client's timeout
# on a busy machine.
RESUMED = 600
CONTEXT = 4096  # one slot's context on every engine of the suite
SLOT_FREED_S = 1.0


@contextlib.asynccontextmanager
async def engine_restored(fleet: Fleet, http: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Whatever the block does to the engines, each is running (not frozen) and its node
    healthy after."""
    try:
        yield
    finally:
        for node, engine in fleet.engines.items():
            if engine.frozen or not engine.running:
                await fleet.restart_engine(http, node)


async def busy_slots(http: aiohttp.ClientSession, engine_url: str) -> int:
    async with http.get(f"{engine_url}/slots") as resp:
        slots: list[dict[str, Any]] = await resp.json()
    return sum(1 for slot in slots if slot.get("is_processing"))


@pytest.mark.parametrize("fleet", engines(SLOTS), indirect=True)
async def test_client_disconnect_frees_the_engine_slot_within_a_second(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """A client that goes away mid-stream frees its slot on the engine within a second."""
    body = chat(fleet.model, LONG, stream=True)
    async with http.post(f"{fleet.base_url}/chat/completions", json=body) as resp:
        first = await StreamReader(resp).first_content()
        assert first.pieces, first.events
        engine = fleet.engines[str(resp.headers[NODE])]
        assert await busy_slots(http, engine.url) == 1
        resp.close()  # the client hangs up
    gone = time.monotonic()

    async def freed() -> bool:
        return await busy_slots(http, engine.url) == 0

    await until(freed, SLOT_FREED_S)
    assert time.monotonic() - gone <= SLOT_FREED_S


async def _until_in_flight(fleet: Fleet, http: aiohttp.ClientSession, node: str) -> None:
    async def arrived() -> bool:
        return bool((await fleet.agent_status(http, node))["inFlight"] >= 1)

    await until(arrived, 10.0)


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_engine_killed_before_the_first_byte_is_served_by_the_other(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Requests sent to an engine that dies before answering are served by the other one."""
    victim = next(iter(fleet.engines))
    survivor = fleet.other(victim)
    url = f"{fleet.base_url}/chat/completions"
    async with engine_restored(fleet, http):
        fleet.engines[victim].freeze()  # it takes the requests but answers nothing
        ids = [new_id() for _ in range(fleet.spec.fleet_slots)]
        sent = [
            asyncio.create_task(stream(http, url, chat(fleet.model, 8, stream=True), cid))
            for cid in ids
        ]
        await _until_in_flight(fleet, http, victim)
        await fleet.engines[victim].kill()
        answers = await asyncio.gather(*sent)
        assert all(a.served for a in answers), [a.events for a in answers if not a.served]
        assert {a.node for a in answers} == {survivor}
        lines = [await fleet.record(cid) for cid in ids]
        assert max(line["attempts"] for line in lines) >= 2  # at least one went to the victim


async def _kill_mid_stream(
    fleet: Fleet, http: aiohttp.ClientSession, tokens: int
) -> tuple[Stream, int]:
    """Stream an answer of ``tokens``, kill its engine after the first token: the client's
    stream as read to its end, and the number of times the router says it resumed it."""
    body = chat(fleet.model, tokens, stream=True)
    cid = new_id()
    async with (
        engine_restored(fleet, http),
        http.post(
            f"{fleet.base_url}/chat/completions", json=body, headers={CORRELATION: cid}
        ) as resp,
    ):
        reader = StreamReader(resp)
        first = await reader.first_content()
        assert first.pieces, first.events
        await fleet.engines[str(resp.headers[NODE])].kill()
        answer = await reader.to_end()
    return answer, int((await fleet.record(cid))["resumed"])


@pytest.mark.parametrize("fleet", engines(CONTINUES), indirect=True)
async def test_engine_killed_mid_stream_goes_on_at_the_other_engine(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """An engine that dies while streaming, with another engine that can continue the answer:
    the client's stream goes on there and ends whole (a finish reason, one ``[DONE]``, no
    error), and the router's record says it was resumed."""
    answer, resumed = await _kill_mid_stream(fleet, http, RESUMED)
    assert not answer.errors, answer.events[-3:]
    assert answer.finish_reasons
    assert answer.done
    assert resumed == 1


@pytest.mark.parametrize("fleet", engines_lacking(CONTINUES), indirect=True)
async def test_engine_killed_mid_stream_ends_the_stream_with_an_error_event_and_done(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """An engine that dies while streaming, where no engine can continue the answer: the
    client's stream ends with an SSE error event and ``[DONE]``, not silently."""
    answer, resumed = await _kill_mid_stream(fleet, http, LONG)
    assert answer.errors, answer.events[-3:]
    assert answer.done
    assert not answer.finish_reasons
    assert resumed == 0


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_restarted_engine_makes_the_node_healthy_again_without_restarting_the_agent(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Kill an engine: the router sees its node unhealthy; start the engine again: the node is
    healthy and serves again, its agent the same process throughout."""
    victim = next(iter(fleet.engines))
    agent = fleet.agents[victim].proc
    async with engine_restored(fleet, http):
        await fleet.engines[victim].kill()
        await fleet.wait_state(http, victim, "unhealthy")
        await fleet.restart_engine(http, victim)
    assert agent.returncode is None
    assert fleet.agents[victim].proc is agent
    await fleet.engines[fleet.other(victim)].kill()  # only the restarted engine can answer now
    async with engine_restored(fleet, http):
        await fleet.wait_state(http, fleet.other(victim), "unhealthy")
        answer = await stream(
            http, f"{fleet.base_url}/chat/completions", chat(fleet.model, 8, stream=True)
        )
    assert answer.served, answer.events
    assert answer.node == victim


@pytest.mark.parametrize("fleet", engines(CONTEXT_LIMIT), indirect=True)
async def test_prompt_longer_than_the_context_is_a_400_naming_the_limit(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """A prompt longer than a node's context is refused with a 400 (TGI: its 422) in OpenAI's
    error envelope whose message names the limit, not a 500."""
    body = chat(fleet.model, 8)
    body["messages"] = [{"role": "user", "content": "the sea " * (2 * CONTEXT)}]
    async with http.post(f"{fleet.base_url}/chat/completions", json=body) as resp:
        answer = await resp.json()
        assert resp.status == fleet.spec.context_status, answer
    error = answer["error"]
    assert set(error) >= {"message", "type"}
    # The context, or (TGI) the input limit one token short of it.
    assert str(CONTEXT) in error["message"] or str(CONTEXT - 1) in error["message"], error
