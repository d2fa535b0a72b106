"""Router replicas on real processes: four emulated boxes with agents reporting to every replica,
a closed-loop streaming load, and the p99 TTFT of one replica against three.

    python -m bench replicas [--workers 12] [--max-parallel 2] [--seconds 2.5]

The latency ratio is a benchmark figure (it depends on how busy the machine is); the tests that
share this fleet assert behaviour only (every request served, spread across the boxes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from bench.cluster import Process, wait_until_healthy
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import serve as serve_agent
from node_agent.settings import AgentSettings

GROUP = "inference-cluster"
MODEL = "llama3.1:8b"
BOXES = ("box-0", "box-1", "box-2", "box-3")
EMULATOR = EmulatorConfig(kind="vllm", models=(MODEL,), tok_s=50.0, ttft_s=0.02)
REPORT_S = 0.3


@dataclass(frozen=True, slots=True)
class Outcome:
    """One streamed request as the client saw it: ``ok``, ``cut`` or ``failed …``."""

    kind: str
    node: str | None
    ttft_s: float
    retried: bool


@dataclass
class LoadRun:
    outcomes: list[Outcome] = field(default_factory=list)

    def served_by(self, start: int = 0) -> Counter[str]:
        return Counter(o.node for o in self.outcomes[start:] if o.kind == "ok" and o.node)

    def p99_ttft_s(self) -> float:
        return float(np.percentile([o.ttft_s for o in self.outcomes if o.kind == "ok"], 99))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def start_router(host: str, port: int, replicas: int = 3) -> Process:
    args = ["--host", host, "--port", str(port), "--default-group", GROUP,
            "--report-interval-s", str(REPORT_S), "--router-replicas", str(replicas)]  # fmt: skip
    return await Process.start(f"router {host}:{port}", "router", args)


def box_agent(
    name: str,
    backend_url: str,
    router_urls: tuple[str, ...],
    max_parallel: int | None,
    router_dns: str | None = None,
) -> AgentSettings:
    return AgentSettings(
        backend_url=backend_url,
        router_urls=router_urls,
        router_dns=router_dns,
        router_dns_interval_s=0.5,
        group=GROUP,
        name=name,
        host="127.0.0.1",
        port=0,
        gpu_source="emulated",
        report_interval_s=REPORT_S,
        max_parallel=max_parallel,
    )


@contextlib.asynccontextmanager
async def boxes(
    router_urls: tuple[str, ...], max_parallel: int | None = None
) -> AsyncIterator[None]:
    """Four emulated boxes, each with an agent that reports to every given router (and, with
    ``max_parallel``, says how many requests its backend runs at once)."""
    async with contextlib.AsyncExitStack() as stack:
        for name in BOXES:
            emu = await stack.enter_async_context(serve_emulator(EMULATOR))
            settings = box_agent(name, emu.url, router_urls, max_parallel)
            await stack.enter_async_context(serve_agent(settings))
        yield


async def knows_all(router_url: str) -> None:
    await wait_until_healthy(router_url, GROUP, set(BOXES))


async def ask(session: aiohttp.ClientSession, replicas: list[str], turn: int) -> Outcome:
    """One streamed request; on a replica that cannot be reached (or answers 503 while it
    warms up), retry on the next one before anything streamed."""
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
                    continue
                if resp.status != 200:
                    return Outcome(f"failed {resp.status} {await resp.text()}", None, 0.0, True)
                return await _read_stream(resp, start, attempt > 0)
        except aiohttp.ClientConnectionError:
            continue
    return Outcome("failed", None, 0.0, True)


async def _read_stream(resp: aiohttp.ClientResponse, start: float, retried: bool) -> Outcome:
    loop = asyncio.get_running_loop()
    node = resp.headers.get("X-Inference-Node")
    ttft = 0.0
    done = False
    try:
        async for line in resp.content:
            if b'"content":"' in line and not ttft:
                ttft = loop.time() - start
            if line.startswith(b"data: [DONE]"):
                done = True
    except aiohttp.ClientPayloadError:
        return Outcome("cut", node, ttft, retried)
    return Outcome("ok" if done else "cut", node, ttft, retried)


async def closed_loop(replicas: list[str], stop: asyncio.Event, run: LoadRun, workers: int) -> None:
    """``workers`` clients, each sending its next request when the last one ended."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        turn = 0

        async def worker() -> None:
            nonlocal turn
            while not stop.is_set():
                turn += 1
                run.outcomes.append(await ask(session, replicas, turn))

        await asyncio.gather(*(worker() for _ in range(workers)))


async def load_for(replicas: list[str], seconds: float, workers: int) -> LoadRun:
    run = LoadRun()
    stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(replicas, stop, run, workers))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return run


async def relearn_s(routers: list[Process], ports: list[int], index: int) -> float:
    """Kill replica ``index``, start it again on its port a second later: how long until it
    knows every box again (the agents, backing off from it, come back on their own)."""
    routers[index].proc.send_signal(signal.SIGKILL)
    await routers[index].proc.wait()
    await asyncio.sleep(1.0)
    routers[index] = await start_router("127.0.0.1", ports[index])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await knows_all(routers[index].url)
    return loop.time() - start


async def one_vs_three(workers: int, max_parallel: int | None, seconds: float) -> dict[str, float]:
    """The same load through one replica, then spread over three, alternated three times;
    the best p99 of each (a CPU hiccup on a small machine is not herding); then how long a
    replica killed and restarted takes to know every box again."""
    ports = [free_port() for _ in range(3)]
    routers = [await start_router("127.0.0.1", port) for port in ports]
    replicas = [r.url for r in routers]
    best: dict[int, float] = {}
    failed = 0
    try:
        async with boxes(tuple(replicas), max_parallel):
            await asyncio.gather(*(knows_all(url) for url in replicas))
            for count in (1, 3, 1, 3, 1, 3):
                run = await load_for(replicas[:count], seconds, workers)
                failed += sum(1 for o in run.outcomes if o.kind != "ok")
                best[count] = min(run.p99_ttft_s(), best.get(count, float("inf")))
            relearned = await relearn_s(routers, ports, 1)
    finally:
        for router in routers:
            await router.stop()
    return {"p99_one_s": best[1], "p99_three_s": best[3], "ratio": best[3] / best[1],
            "not_ok": float(failed), "relearned_s": relearned}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "replicas", help="p99 TTFT through 3 router replicas vs 1; a restarted one's relearning"
    )
    cmd.add_argument("--workers", type=int, default=12)
    cmd.add_argument("--max-parallel", type=int, default=None, help="the boxes' slots")
    cmd.add_argument("--seconds", type=float, default=2.5, help="per round")


async def run_cli(args: argparse.Namespace) -> int:
    figures = await one_vs_three(args.workers, args.max_parallel, args.seconds)
    print(
        f"p99 TTFT: 1 replica {figures['p99_one_s'] * 1000:.1f} ms, 3 replicas "
        f"{figures['p99_three_s'] * 1000:.1f} ms, ratio {figures['ratio']:.2f}; "
        f"requests not served whole: {figures['not_ok']:g}; a replica restarted knew every "
        f"box again after {figures['relearned_s']:.2f} s"
    )
    return 0 if figures["not_ok"] == 0 else 1
