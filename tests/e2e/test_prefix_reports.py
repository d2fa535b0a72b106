"""Prompt-cache summaries end to end: requests through a router reach an agent in front of an
emulated engine, and the agent's reports put their prefixes in the router's registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import RunningAgent
from node_agent.app import serve as serve_agent
from node_protocol.prompt_prefix import BLOCK_CHARS, SCHEME, fingerprint
from node_protocol.wire import PrefixSummary
from router.app import REGISTRY, RunningRouter
from router.app import serve as serve_router
from router.registry import NodeState
from tests.conftest import router_settings

from .conftest import GROUP, agent_settings

MODEL = "llama3.1:8b"
SYSTEM = "You are Octopus, an agent that plans before it acts. Think step by step. " * 40
QUESTIONS = ("What is in the repository?", "Run the tests.", "Why did the build fail?")


@dataclass
class OneNode:
    router: RunningRouter
    agent: RunningAgent

    def serving(self) -> bool:
        """The router has the node, healthy, with the model."""
        group = self.router.app[REGISTRY].groups.get(GROUP)
        if group is None or not group.model_index.get(MODEL):
            return False
        return all(n.state(3) == NodeState.HEALTHY for n in group.nodes.values())

    def summary(self) -> PrefixSummary | None:
        """The model's summary as the router's registry holds it."""
        for node in self.router.app[REGISTRY].groups[GROUP].nodes.values():
            return node.prefix_caches.get(MODEL)
        return None


@contextlib.asynccontextmanager
async def one_node() -> AsyncIterator[OneNode]:
    config = EmulatorConfig(kind="vllm", models=(MODEL,), tok_s=400.0, ttft_s=0.01)
    async with (
        serve_router(router_settings(max_body_bytes=256 * 1024)) as router,
        serve_emulator(config) as emulator,
        serve_agent(agent_settings("gpu-box", emulator.url, router.url)) as agent,
    ):
        yield OneNode(router, agent)


def chat(question: str) -> dict[str, object]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": MODEL, "messages": messages, "max_tokens": 4, "stream": True}


async def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll the router's state (reports arrive on their own schedule) until ``cond`` holds."""
    async with asyncio.timeout(limit_s):
        while True:
            if cond():
                return
            await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_shared_prefixes_reach_the_routers_registry() -> None:
    """Requests sharing a system prompt, sent through the router, make the agent's report
    carry their leading blocks: the router's registry then says the node holds that prefix
    for a new question, and holds each asked prompt whole."""
    async with one_node() as cluster, aiohttp.ClientSession() as session:
        url = f"{cluster.router.url}/{GROUP}/v1/chat/completions"
        await wait_for(cluster.serving)
        for question in QUESTIONS:
            async with session.post(url, json=chat(question)) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
        asked = [fingerprint(chat(q)) for q in QUESTIONS]
        await wait_for(
            lambda: (
                (s := cluster.summary()) is not None
                and all(s.prefix_chars(fp) == fp.chars for fp in asked)
            )
        )
        summary = cluster.summary()
        assert summary is not None
        assert summary.scheme == SCHEME
        assert all(fp.blocks[0] in summary.hashes for fp in asked)
        new = fingerprint(chat("Something never asked"))
        held = summary.prefix_chars(new)
        assert len(SYSTEM) - BLOCK_CHARS < held <= len(SYSTEM)
        async with session.get(f"{cluster.agent.local_url}/metrics") as resp:
            metrics = await resp.text()
        total = sum(fp.chars for fp in asked)
        assert f'node_agent_prompt_chars_total{{model="{MODEL}"}} {float(total)}' in metrics
        assert "node_agent_prompt_cached_chars_estimated_total" in metrics
