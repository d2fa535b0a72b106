"""An in-process cluster on real sockets: router, emulated backends, an agent beside each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bench.emulator.app import RunningEmulator
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import RunningAgent
from node_agent.app import serve as serve_agent
from node_agent.settings import AgentSettings
from router.app import RunningRouter
from router.app import serve as serve_router
from tests.conftest import router_settings

GROUP = "inference-cluster"
FAST = {"tok_s": 400.0, "ttft_s": 0.01}

# The demo cluster's shape, at test speed.
NODES = {
    "gpu-box-1": EmulatorConfig(
        kind="ollama", models=("llama3.1:8b", "llama2:13b"), gpu_memory_gb=(24.0,), **FAST
    ),
    "gpu-box-2": EmulatorConfig(kind="vllm", models=("llama2:13b",), gpu_memory_gb=(16.0,), **FAST),
    "gpu-box-3": EmulatorConfig(
        kind="vllm", models=("llama3.1:70b",), gpu_memory_gb=(40.0, 40.0), **FAST
    ),
}


@dataclass
class LocalCluster:
    router: RunningRouter
    router_port: int
    emulators: dict[str, RunningEmulator]
    emulator_ports: dict[str, int]
    agents: dict[str, RunningAgent]
    router_stack: contextlib.AsyncExitStack
    node_stacks: dict[str, contextlib.AsyncExitStack] = field(default_factory=dict)

    async def restart_router(self) -> None:
        """Stop the router and start an empty one on the same port."""
        await self.router_stack.aclose()
        self.router_stack = contextlib.AsyncExitStack()
        self.router = await self.router_stack.enter_async_context(
            serve_router(router_settings(port=self.router_port))
        )

    @property
    def base_url(self) -> str:
        return f"{self.router.url}/{GROUP}/v1"

    async def node_states(self, session: aiohttp.ClientSession) -> dict[str, str]:
        url = f"{self.router.url}/api/server-groups/{GROUP}/nodes"
        async with session.get(url) as resp:
            return {n["name"]: n["status"] for n in (await resp.json())["nodes"]}

    async def wait_states(
        self, session: aiohttp.ClientSession, want: dict[str, str], limit_s: float = 10.0
    ) -> float:
        """Wait until the router shows the wanted states; returns how long it took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(limit_s):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    states = await self.node_states(session)
                    if all(states.get(k) == v for k, v in want.items()):
                        return loop.time() - start
                await asyncio.sleep(0.1)

    async def stop_emulator(self, name: str) -> None:
        await self.node_stacks.pop(name).aclose()

    async def start_emulator(self, name: str) -> None:
        stack = contextlib.AsyncExitStack()
        port = self.emulator_ports[name]
        self.emulators[name] = await stack.enter_async_context(
            serve_emulator(NODES[name], port=port)
        )
        self.node_stacks[name] = stack


def agent_settings(name: str, backend_url: str, router_url: str, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "backend_url": backend_url,
        "router_urls": (router_url,),
        "group": GROUP,
        "name": name,
        "host": "127.0.0.1",
        "port": 0,
        "gpu_source": "emulated",
        "report_interval_s": 0.2,
    }
    return AgentSettings(**(values | overrides))


@contextlib.asynccontextmanager
async def local_cluster() -> AsyncIterator[LocalCluster]:
    async with contextlib.AsyncExitStack() as stack:
        router_stack = contextlib.AsyncExitStack()
        router = await router_stack.enter_async_context(serve_router(router_settings()))
        cluster = LocalCluster(
            router=router,
            router_port=int(router.url.rsplit(":", 1)[1]),
            emulators={},
            emulator_ports={},
            agents={},
            router_stack=router_stack,
        )
        stack.push_async_callback(lambda: cluster.router_stack.aclose())
        for name in NODES:
            node_stack = contextlib.AsyncExitStack()
            emu = await node_stack.enter_async_context(serve_emulator(NODES[name]))
            cluster.emulators[name] = emu
            cluster.emulator_ports[name] = int(emu.url.rsplit(":", 1)[1])
            cluster.node_stacks[name] = node_stack
        for name, emu in cluster.emulators.items():
            cluster.agents[name] = await stack.enter_async_context(
                serve_agent(agent_settings(name, emu.url, router.url))
            )
        async with aiohttp.ClientSession() as session:
            await cluster.wait_states(session, dict.fromkeys(NODES, "healthy"))
        try:
            yield cluster
        finally:
            for node_stack in cluster.node_stacks.values():
                await node_stack.aclose()


@pytest.fixture
async def cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster() as running:
        yield running
