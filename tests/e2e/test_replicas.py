"""Several router replicas with no shared store: agents report to every replica (a URL list, or
one DNS name), a replica killed and restarted relearns every node, a drain through one replica
holds at all of them, and three replicas deciding from old reports serve every request and
spread it across the boxes. (Their latency against one replica, and how long a restarted one
takes to relearn, are a benchmark: ``python -m bench replicas``.)"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.emulator.app import serve as serve_emulator
from bench.replica_check import (
    BOXES,
    EMULATOR,
    GROUP,
    LoadRun,
    box_agent,
    boxes,
    closed_loop,
    free_port,
    knows_all,
    load_for,
    start_router,
)
from node_agent.app import serve as serve_agent


class TestReplicaList:
    """Agents given three router URLs keep all three replicas informed."""

    async def test_kill_restart_and_drain(self) -> None:
        """Killing a replica loses no request that had not started streaming; restarted, it
        knows every node again, with no agent restarted; a node drained through one replica
        gets nothing new from any replica."""
        ports = [free_port() for _ in range(3)]
        routers = [await start_router("127.0.0.1", p) for p in ports]
        replicas = [r.url for r in routers]
        try:
            async with boxes(tuple(replicas)):
                await asyncio.gather(*(knows_all(url) for url in replicas))
                run = LoadRun()
                stop = asyncio.Event()
                load = asyncio.create_task(closed_loop(replicas, stop, run, workers=6))
                await asyncio.sleep(1.0)
                routers[1].proc.send_signal(signal.SIGKILL)
                await routers[1].proc.wait()
                await asyncio.sleep(1.0)
                routers[1] = await start_router("127.0.0.1", ports[1])
                await knows_all(replicas[1])
                async with aiohttp.ClientSession() as session:
                    node_id = await _node_id(session, replicas[0], "box-1")
                    drain = f"{replicas[0]}/api/server-groups/{GROUP}/nodes/{node_id}/drain"
                    async with session.post(drain) as resp:
                        assert resp.status == 200
                    await asyncio.sleep(1.0)  # the agent carries the drain to every replica
                    drained_at = len(run.outcomes)
                    for url in replicas:
                        assert await _state(session, url, "box-1") == "draining"
                await asyncio.sleep(1.5)
                stop.set()
                await load
        finally:
            for router in routers:
                await router.stop()
        assert not [o for o in run.outcomes if o.kind.startswith("failed")]
        assert sum(1 for o in run.outcomes if o.kind == "ok") > 50
        after_drain = run.served_by(drained_at)
        assert after_drain["box-1"] == 0
        assert sum(after_drain.values()) > 0  # the other boxes went on serving


async def _node_id(session: aiohttp.ClientSession, router_url: str, name: str) -> str:
    async with session.get(f"{router_url}/api/server-groups/{GROUP}/nodes") as resp:
        return next(n["nodeId"] for n in (await resp.json())["nodes"] if n["name"] == name)


async def _state(session: aiohttp.ClientSession, router_url: str, name: str) -> str:
    async with session.get(f"{router_url}/api/server-groups/{GROUP}/nodes") as resp:
        return str(next(n["status"] for n in (await resp.json())["nodes"] if n["name"] == name))


class TestReplicaDns:
    """Agents given one name that resolves to every replica register with each of them."""

    async def test_dns_name(self) -> None:
        """Three replicas on 127.0.0.1-3 behind one name each learn all four nodes."""
        port = free_port()
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        routers = [await start_router(h, port) for h in hosts]

        async def resolver(host: str, _port: int) -> list[str]:
            assert host == "routers.inference.test"
            return hosts

        try:
            async with _boxes_by_dns(f"http://routers.inference.test:{port}", resolver):
                await asyncio.gather(*(knows_all(r.url) for r in routers))
        finally:
            for router in routers:
                await router.stop()


async def _busy_answers(router_url: str) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{router_url}/metrics")).text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "router_busy_answers_total"
    )


@contextlib.asynccontextmanager
async def _boxes_by_dns(router_dns: str, resolver: object) -> AsyncIterator[None]:
    """The four boxes, their agents finding the replicas through one DNS name."""
    async with contextlib.AsyncExitStack() as stack:
        for name in BOXES:
            emu = await stack.enter_async_context(serve_emulator(EMULATOR))
            settings = box_agent(name, emu.url, (), None, router_dns)
            await stack.enter_async_context(serve_agent(settings, resolver))  # type: ignore[arg-type]
        yield


class TestReplicasUnderLoad:
    """Three replicas deciding from ~0.3 s-old reports serve every request and do not herd:
    no box gets more than twice its fair share of the load."""

    async def _spread(self, max_parallel: int | None) -> tuple[LoadRun, float]:
        routers = [await start_router("127.0.0.1", free_port()) for _ in range(3)]
        replicas = [r.url for r in routers]
        try:
            async with boxes(tuple(replicas), max_parallel):
                await asyncio.gather(*(knows_all(url) for url in replicas))
                run = await load_for(replicas, seconds=3.0, workers=12)
                busy = sum([await _busy_answers(url) for url in replicas])
        finally:
            for router in routers:
                await router.stop()
        return run, busy

    @staticmethod
    def _assert_served_and_spread(run: LoadRun) -> None:
        assert {o.kind for o in run.outcomes} == {"ok"}
        served = run.served_by()
        assert set(served) == set(BOXES)
        fair = sum(served.values()) / len(BOXES)
        assert max(served.values()) <= 2 * fair, served

    async def test_every_request_served_and_spread(self) -> None:
        """Backends whose parallel slots are not known (vLLM): each replica balances its own
        requests over all four boxes."""
        run, _ = await self._spread(max_parallel=None)
        self._assert_served_and_spread(run)

    async def test_slot_checks_settle_races_without_losing_requests(self) -> None:
        """Backends of 2 slots each, 12 clients on 8 slots: requests queue at the replicas,
        which count reported free slots as free and have the agents check them. Some checks
        are answered busy (another replica took the slot), and every request is still served,
        spread over all four boxes."""
        run, busy = await self._spread(max_parallel=2)
        self._assert_served_and_spread(run)
        assert busy > 0
