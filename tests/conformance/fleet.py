"""A fleet as a user runs it: ``python -m router``, engines, ``python -m node_agent`` beside each
(:func:`bench.llamacpp.fleet.launch_fleet`).

Every part is a process of its own on real sockets; the router logs JSON to a file the tests
read its per-request lines from. Node ``<engine>-1`` and ``<engine>-2`` are the two instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.cluster import Process
from bench.llamacpp.fleet import launch_fleet
from bench.llamacpp.servers import EngineProcess, free_port

from .engines import EngineSpec

REPORT_INTERVAL_S = "0.3"
WAIT_S = 30.0


async def until(
    probe: Callable[[], Awaitable[bool]], within_s: float, every_s: float = 0.02
) -> None:
    """Poll a remote view (no events to wait on) until ``probe`` holds, at most ``within_s``."""
    async with asyncio.timeout(within_s):
        while not await probe():  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(every_s)


@dataclass
class Fleet:
    spec: EngineSpec
    group: str
    router: Process
    router_log: Path
    engines: dict[str, EngineProcess]  # by node name
    agents: dict[str, Process]
    agent_logs: dict[str, Path]

    @property
    def base_url(self) -> str:
        return f"{self.router.url}/{self.group}/v1"

    @property
    def model(self) -> str:
        return self.spec.model

    def other(self, node: str) -> str:
        return next(name for name in self.engines if name != node)

    def records(self) -> dict[str, dict[str, Any]]:
        """The router's per-request log lines so far, by correlation id."""
        found: dict[str, dict[str, Any]] = {}
        for line in self.router_log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict) and entry.get("logger") == "router.requests":
                    found[str(entry.get("correlation_id"))] = entry
        return found

    async def record(self, correlation_id: str) -> dict[str, Any]:
        """One request's log line (the router writes them in batches: wait for it)."""

        async def written() -> bool:
            return correlation_id in self.records()

        await until(written, 5.0)
        return self.records()[correlation_id]

    async def node_states(self, http: aiohttp.ClientSession) -> dict[str, str]:
        url = f"{self.router.url}/api/server-groups/{self.group}/nodes"
        async with http.get(url) as resp:
            return {n["name"]: n["status"] for n in (await resp.json())["nodes"]}

    async def wait_state(self, http: aiohttp.ClientSession, node: str, state: str) -> None:
        async def reached() -> bool:
            return (await self.node_states(http)).get(node) == state

        await until(reached, WAIT_S)

    async def agent_status(self, http: aiohttp.ClientSession, node: str) -> dict[str, Any]:
        async with http.get(f"{self.agents[node].url}/status") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def restart_engine(self, http: aiohttp.ClientSession, node: str) -> None:
        """Start a stopped (or killed) engine again on its port; wait until the router sees
        the node healthy, its agent untouched."""
        await self.engines[node].restart()
        await self.wait_state(http, node, "healthy")


@contextlib.asynccontextmanager
async def launch(spec: EngineSpec, folder: Path) -> AsyncIterator[Fleet]:
    """Router, the engine instances and their agents; everything stopped after the block."""
    group = spec.name.replace("_", "-")
    names = [f"{spec.name}-{i}" for i in range(1, spec.instances + 1)]
    engines = {n: spec.factory(free_port(), folder / f"{n}.engine.log") for n in names}
    router_args = ["--log-format", "json", "--health-interval-s", "1"]
    router_args += ["--report-interval-s", REPORT_INTERVAL_S]
    # The emulators emulate GPUs too; the real engines here run on the CPU.
    agent_args = ["--gpu-source", "none" if spec.real else "emulated"]
    agent_args += ["--report-interval", REPORT_INTERVAL_S]
    async with launch_fleet(
        engines, folder, group, router_args=router_args, agent_args=agent_args
    ) as running:
        yield Fleet(
            spec,
            group,
            running.router,
            running.router_log,
            running.engines,
            running.agents,
            running.agent_logs,
        )
