"""Several router replicas with no shared store: agents report to every replica (a URL list, or
one DNS name), a replica killed and restarted relearns every node within 2 s, a drain through
one replica holds at all of them, and p99 TTFT with 3 replicas stays near the 1-replica figure."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import Process, wait_until_healthy
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import serve as serve_agent
from tests.e2e.conftest import GROUP, agent_settings

MODEL = "llama3.1:8b"
BOXES = ("box-0", "box-1", "box-2", "box-3")
EMULATOR = EmulatorConfig(kind="vllm", models=(MODEL,), tok_s=50.0, ttft_s=0.02)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _router(host: str, port: int) -> Process:
    args = ["--host", host, "--port", str(port), "--default-group", GROUP,
            "--report-interval-s", "0.3", "--router-replicas", "3"]  # fmt: skip
    return await Process.start(f"router {host}:{port}", "router", args)


@contextlib.asynccontextmanager
async def _nodes(
    router_urls: tuple[str, ...] = (),
    router_dns: str | None = None,
    resolver: object = None,
    max_parallel: int | None = None,
) -> AsyncIterator[None]:
    """Four emulated boxes, each with an agent that reports to the given routers (and, with
    ``max_parallel``, says how many requests its backend runs at once)."""
    async with contextlib.AsyncExitStack() as stack:
        for name in BOXES:
            emu = await stack.enter_async_context(serve_emulator(EMULATOR))
            settings = agent_settings(
                name,
                emu.url,
                "http://127.0.0.1:1",
                router_urls=router_urls,
                router_dns=router_dns,
                router_dns_interval_s=0.5,
                report_interval_s=0.3,
                max_parallel=max_parallel,
            )
            if resolver is None:
                await stack.enter_async_context(serve_agent(settings))
            else:
                await stack.enter_async_context(serve_agent(settings, resolver))  # type: ignore[arg-type]
        yield


async def _ask(
    session: aiohttp.ClientSession, replicas: list[str], turn: int
) -> tuple[str, str | None, float, bool]:
    """One streamed request; on a replica that cannot be reached, retry on the next one.
    Returns (outcome, node, ttft, retried): outcome is ok, cut or failed."""
    body = {"model": MODEL, "stream": True, "max_tokens": 12,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    loop = asyncio.get_running_loop()
    for attempt in range(len(replicas)):
        url = f"{replicas[(turn + attempt) % len(replicas)]}/{GROUP}/v1/chat/completions"
        start = loop.time()
        try:
            async with session.post(url, json=body) as resp:
                if resp.status == 503:
                    await resp.read()
                    continue  # that replica cannot serve it now (e.g. warming up): next one
                if resp.status != 200:
                    return f"failed {resp.status} {await resp.text()}", None, 0.0, attempt > 0
                ttft = 0.0
                done = False
                try:
                    async for line in resp.content:
                        if b'"content":"' in line and not ttft:
                            ttft = loop.time() - start
                        if line.startswith(b"data: [DONE]"):
                            done = True
                except aiohttp.ClientPayloadError:
                    return "cut", resp.headers.get("X-Inference-Node"), ttft, attempt > 0
                node = resp.headers.get("X-Inference-Node")
                return ("ok" if done else "cut"), node, ttft, attempt > 0
        except aiohttp.ClientConnectionError:
            continue  # that replica is gone: retry on another before anything streamed
    return "failed", None, 0.0, True


async def _load(
    replicas: list[str], stop: asyncio.Event, out: list[tuple[str, str | None, float, bool]],
    workers: int,
) -> None:  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        turn = 0

        async def worker() -> None:
            nonlocal turn
            while not stop.is_set():
                turn += 1
                out.append(await _ask(session, replicas, turn))

        await asyncio.gather(*(worker() for _ in range(workers)))


async def _knows_all(router_url: str) -> None:
    await wait_until_healthy(router_url, GROUP, set(BOXES))


class TestReplicaList:
    """Agents given three router URLs keep all three replicas informed."""

    async def test_kill_restart_and_drain(self) -> None:
        """Killing a replica loses no request that had not started streaming; restarted, it
        knows every node within 2 s; a node drained through one replica gets nothing new from
        any replica."""
        ports = [_free_port() for _ in range(3)]
        routers = [await _router("127.0.0.1", p) for p in ports]
        replicas = [r.url for r in routers]
        try:
            async with _nodes(router_urls=tuple(replicas)):
                await asyncio.gather(*(_knows_all(url) for url in replicas))
                outcomes: list[tuple[str, str | None, float, bool]] = []
                stop = asyncio.Event()
                load = asyncio.create_task(_load(replicas, stop, outcomes, workers=6))
                await asyncio.sleep(1.0)
                routers[1].proc.send_signal(signal.SIGKILL)
                await routers[1].proc.wait()
                await asyncio.sleep(1.0)
                routers[1] = await _router("127.0.0.1", ports[1])
                loop = asyncio.get_running_loop()
                start = loop.time()
                await _knows_all(replicas[1])
                relearned_s = loop.time() - start
                async with aiohttp.ClientSession() as session:
                    node_id = await _node_id(session, replicas[0], "box-1")
                    drain = f"{replicas[0]}/api/server-groups/{GROUP}/nodes/{node_id}/drain"
                    async with session.post(drain) as resp:
                        assert resp.status == 200
                    await asyncio.sleep(1.0)  # the agent carries the drain to every replica
                    drained_at = len(outcomes)
                    for url in replicas:
                        assert await _state(session, url, "box-1") == "draining"
                await asyncio.sleep(1.5)
                stop.set()
                await load
        finally:
            for router in routers:
                await router.stop()
        assert relearned_s <= 2.0
        assert not [o for o in outcomes if o[0].startswith("failed")]
        assert sum(1 for o in outcomes if o[0] == "ok") > 50
        after_drain = Counter(o[1] for o in outcomes[drained_at:] if o[0] == "ok")
        assert after_drain["box-1"] == 0
        assert len(after_drain) == 3


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
        port = _free_port()
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        routers = [await _router(h, port) for h in hosts]

        async def resolver(host: str, _port: int) -> list[str]:
            assert host == "routers.inference.test"
            return hosts

        try:
            async with _nodes(
                router_dns=f"http://routers.inference.test:{port}", resolver=resolver
            ):
                await asyncio.gather(*(_knows_all(r.url) for r in routers))
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


async def _one_vs_three(
    workers: int, max_parallel: int | None = None
) -> tuple[float, float, Counter[str], float]:
    """The same closed-loop load through one replica, then spread over three, three times
    each (best of three: a CPU hiccup is not herding). Returns p99 TTFT with one and with
    three, every outcome, and the busy answers the replicas got."""
    routers = [await _router("127.0.0.1", _free_port()) for _ in range(3)]
    replicas = [r.url for r in routers]
    best: dict[int, float] = {}
    seen: Counter[str] = Counter()
    try:
        async with _nodes(router_urls=tuple(replicas), max_parallel=max_parallel):
            await asyncio.gather(*(_knows_all(url) for url in replicas))
            for count in (1, 3, 1, 3, 1, 3):
                outcomes: list[tuple[str, str | None, float, bool]] = []
                stop = asyncio.Event()
                load = asyncio.create_task(_load(replicas[:count], stop, outcomes, workers))
                await asyncio.sleep(2.5)
                stop.set()
                await load
                seen.update(o[0] for o in outcomes)
                p99 = float(np.percentile([o[2] for o in outcomes if o[0] == "ok" and o[2]], 99))
                best[count] = min(p99, best.get(count, p99))
            busy = sum([await _busy_answers(url) for url in replicas])
    finally:
        for router in routers:
            await router.stop()
    print(f"p99 TTFT: 1 replica {best[1] * 1000:.1f} ms, 3 replicas {best[3] * 1000:.1f} ms; "
          f"outcomes {dict(seen)}; busy answers {busy:g}")  # fmt: skip
    return best[1], best[3], seen, busy


class TestReplicaLatency:
    """Three replicas deciding from ~0.3 s-old reports do not herd: with the default policy,
    p99 TTFT stays within 1.25x of one replica's at the same total load."""

    async def test_p99_ttft_one_vs_three(self) -> None:
        """Backends whose parallel slots are not known (vLLM): each replica balances its own
        requests."""
        one, three, seen, _ = await _one_vs_three(workers=12)
        assert set(seen) == {"ok"}
        assert three <= 1.25 * one

    async def test_p99_ttft_one_vs_three_with_slot_checks(self) -> None:
        """Backends of 2 slots each, 12 clients on 8 slots: requests queue at the replicas,
        which count reported free slots as free and have the agents check them. Some checks
        are answered busy (another replica took the slot), every request is still served, and
        p99 TTFT stays within 1.25x of one replica's (which never needs a check)."""
        one, three, seen, busy = await _one_vs_three(workers=12, max_parallel=2)
        assert set(seen) == {"ok"}
        assert busy > 0
        assert three <= 1.25 * one
