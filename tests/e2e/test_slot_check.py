"""Behind several router replicas, a slot a router counts as free may have gone to another
replica since the last report. The router then has the agent check the slot; a busy answer is
not an error: the router notes the node full and picks again, and the client never sees it.

Real processes on port 0: a router told it is one of two replicas, two emulated vLLM boxes of 2
slots whose agents report rarely, and the "other replica" played by requests sent straight to
one agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import wait_until_healthy
from bench.emulator.app import RunningEmulator
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import RunningAgent
from node_agent.app import serve as serve_agent
from router.app import RunningRouter
from router.app import serve as serve_router
from tests.conftest import router_settings
from tests.e2e.conftest import GROUP, agent_settings

MODEL = "llama3.1:8b"
SLOTS = 2
EMULATOR = EmulatorConfig(kind="vllm", models=(MODEL,), tok_s=40.0, ttft_s=0.01)
LONG: dict[str, Any] = {
    "model": MODEL,
    "stream": True,
    "max_tokens": 80,  # two seconds at 40 tok/s: held while the test runs
    "messages": [{"role": "user", "content": "x"}],
}


@dataclasses.dataclass
class Boxes:
    router: RunningRouter
    emulators: dict[str, RunningEmulator]
    agents: dict[str, RunningAgent]


@contextlib.asynccontextmanager
async def two_boxes() -> AsyncIterator[Boxes]:
    """The router (one of 2 replicas) and boxes a, b that each reported once: their next
    report is 20 s away, so the router's view of their load stays what it was."""
    async with contextlib.AsyncExitStack() as stack:
        router = await stack.enter_async_context(
            serve_router(router_settings(report_interval_s=10.0, router_replicas=2))
        )
        emulators: dict[str, RunningEmulator] = {}
        agents: dict[str, RunningAgent] = {}
        for name in ("a", "b"):
            emulators[name] = await stack.enter_async_context(serve_emulator(EMULATOR))
            settings = agent_settings(
                name,
                emulators[name].url,
                router.url,
                report_interval_s=20.0,
                max_parallel=SLOTS,
            )
            agents[name] = await stack.enter_async_context(serve_agent(settings))
        await wait_until_healthy(router.url, GROUP, set(agents))
        yield Boxes(router, emulators, agents)


def received(emulator: RunningEmulator) -> int:
    """Requests the backend ever took."""
    engine = emulator.engine
    return engine.in_flight + engine.completed + engine.cancelled


async def busy_answers(session: aiohttp.ClientSession, router: RunningRouter) -> float:
    text = await (await session.get(f"{router.url}/metrics")).text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "router_busy_answers"
        for s in family.samples
        if s.name == "router_busy_answers_total"
    )


async def test_a_slot_taken_by_another_replica_is_picked_again() -> None:
    """Box a's two slots are taken behind the router's back (another replica's requests);
    the router, still counting them free, sends with a slot check: a answers busy, the router
    picks b, and both of the router's requests are served by b. Box a's backend never sees
    them, and the busy answers are counted."""
    async with two_boxes() as boxes, aiohttp.ClientSession() as session:
        chat = "/v1/chat/completions"
        async with contextlib.AsyncExitStack() as held:
            for _ in range(SLOTS):  # the other replica fills box a
                r = await held.enter_async_context(
                    session.post(f"{boxes.agents['a'].url}{chat}", json=LONG)
                )
                assert r.status == 200
                await r.content.readuntil(b"\n\n")
            assert received(boxes.emulators["a"]) == SLOTS
            nodes = []
            for _ in range(SLOTS):  # the router still counts a's slots free
                r = await held.enter_async_context(
                    session.post(f"{boxes.router.url}/{GROUP}{chat}", json=LONG)
                )
                assert r.status == 200, await r.text()
                await r.content.readuntil(b"\n\n")
                nodes.append(r.headers["X-Inference-Node"])
            assert received(boxes.emulators["a"]) == SLOTS
            assert received(boxes.emulators["b"]) == SLOTS
            assert nodes == ["b", "b"]
            assert await busy_answers(session, boxes.router) >= 1
