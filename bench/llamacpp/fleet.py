"""Engines behind the router, as a user runs them: ``python -m router``, the engines
(:mod:`bench.llamacpp.servers`), and ``python -m node_agent`` beside each, every part a process
of its own on real sockets.

:func:`launch_fleet` starts them and waits until the router sees every node healthy; the
conformance suite and ``python -m bench prefix`` both run their fleets through it.

    python -m bench.llamacpp.fleet [--servers 2] [--parallel 2] [--ctx 8192]

runs that many llama-servers on the tiny random model, prints
``FLEET READY <router>/<group>/v1`` and runs until Ctrl-C, for ``python -m bench run
--target-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cluster import Process, wait_until_healthy

from .model import ensure
from .servers import EngineProcess, llama_server

AGENT_ARGS = ("--gpu-source", "none", "--report-interval", "0.5")  # the engines run on CPUs


@dataclass(slots=True)
class Fleet:
    """A running fleet: the router, and by node name each engine, its agent and its log."""

    router: Process
    group: str
    router_log: Path
    engines: dict[str, EngineProcess]
    agents: dict[str, Process]
    agent_logs: dict[str, Path]

    @property
    def base_url(self) -> str:
        return f"{self.router.url}/{self.group}/v1"


async def _start_router(folder: Path, group: str, extra: Sequence[str]) -> tuple[Process, Path]:
    log = folder / "router.log"
    args = ["--host", "127.0.0.1", "--port", "0", "--default-group", group, *extra]
    return await Process.start("router", "router", args, log_path=log), log


async def _start_agent(
    node: str, engine: EngineProcess, router: Process, group: str, extra: Sequence[str], log: Path
) -> Process:
    args = ["--backend-url", engine.url, "--router-url", router.url, "--group", group]
    args += ["--name", node, "--host", "127.0.0.1", "--port", "0", *extra]
    return await Process.start(f"agent {node}", "node_agent", args, log_path=log)


@contextlib.asynccontextmanager
async def launch_fleet(
    engines: Mapping[str, EngineProcess],
    folder: Path,
    group: str,
    *,
    router_args: Sequence[str] = (),
    agent_args: Sequence[str] = AGENT_ARGS,
) -> AsyncIterator[Fleet]:
    """The router, then ``engines`` (by node name, not yet started: all at once), then an agent
    beside each; logs go to ``folder``. Ready when yielded; on exit the agents stop first (they
    deregister), then the engines, then the router."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        router, router_log = await _start_router(folder, group, router_args)
        stack.push_async_callback(router.stop)
        for engine in engines.values():
            stack.push_async_callback(engine.stop)  # also one that failed to start
        await asyncio.gather(*(engine.start() for engine in engines.values()))
        agents: dict[str, Process] = {}
        agent_logs = {name: folder / f"{name}.agent.log" for name in engines}
        for name, engine in engines.items():
            agent = await _start_agent(name, engine, router, group, agent_args, agent_logs[name])
            stack.push_async_callback(agent.stop)
            agents[name] = agent
        await wait_until_healthy(router.url, group, set(engines))
        yield Fleet(router, group, router_log, dict(engines), agents, agent_logs)


def llama_fleet_engines(
    model: Path,
    servers: int,
    folder: Path,
    *,
    parallel: int = 2,
    context: int = 8192,
    extra: Sequence[str] = (),
) -> dict[str, EngineProcess]:
    """``servers`` llama-servers named ``llama-1``, ``llama-2``..., each logging to ``folder``
    (``extra``: more flags for each)."""
    names = [f"llama-{i}" for i in range(1, servers + 1)]
    return {
        name: llama_server(
            model,
            parallel=parallel,
            context=context,
            extra=extra,
            log_path=folder / f"{name}.engine.log",
        )
        for name in names
    }


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = args.model or ensure()
    await asyncio.to_thread(args.logs.mkdir, parents=True, exist_ok=True)
    engines = llama_fleet_engines(
        model, args.servers, args.logs, parallel=args.parallel, context=args.ctx
    )
    agent_args = (*AGENT_ARGS, "--backend-kind", "llamacpp", "--max-parallel", str(args.parallel))
    async with launch_fleet(engines, args.logs, args.group, agent_args=agent_args) as fleet:
        print(f"FLEET READY {fleet.base_url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llamacpp.fleet")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--group", default="llamacpp")
    parser.add_argument("--model", type=Path, help="a GGUF (default: the tiny random model)")
    parser.add_argument("--logs", type=Path, default=Path("results/llamacpp-fleet"))
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
