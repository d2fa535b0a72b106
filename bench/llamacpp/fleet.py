"""Real ``llama-server`` processes, alone or as a fleet behind the router with an agent each.

``bench/llamacpp/build.sh`` builds the binary into a cache outside the repo; :func:`server_binary`
finds it there (``LLAMA_SERVER_BIN`` names another). :func:`llama_server` runs one server on a
free port until the block exits; :func:`launch_fleet` runs the router, ``servers`` llama-servers
and an agent beside each, and waits until the router sees every node healthy.

    python -m bench.llamacpp.fleet [--servers 2] [--parallel 2] [--model M.gguf]

prints ``FLEET READY <router>/<group>/v1`` and runs until Ctrl-C, for
``python -m bench run --target-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.cluster import Process, wait_until_healthy

VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LISTENING = re.compile(r"listening on (http://\S+)")


def server_binary() -> Path:
    """Where ``build.sh`` puts llama-server (it may not be built yet)."""
    named = os.environ.get("LLAMA_SERVER_BIN")
    if named:
        return Path(named)
    cache = os.environ.get("LLAMA_SERVER_CACHE")
    if not cache:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = f"{base}/inference-router/llama-cpp"
    return Path(cache) / VERSION / "bin" / "llama-server"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to run one llama-server: the model, its alias, ``--parallel`` slots, ``-c`` context
    (shared by the slots), ``-t`` threads, and any other flags."""

    model: Path
    alias: str = "tiny"
    parallel: int = 2
    ctx: int = 8192
    threads: int = 1
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [
            "-m", str(self.model), "--alias", self.alias, "--host", "127.0.0.1", "--port", "0",
            "--parallel", str(self.parallel), "-c", str(self.ctx), "-t", str(self.threads),
            "--metrics", *self.extra,
        ]  # fmt: skip


@dataclass(slots=True)
class RunningServer:
    url: str
    proc: asyncio.subprocess.Process
    log: Path


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def _listening_url(proc: asyncio.subprocess.Process, log: Path) -> str:
    """The URL llama-server logs once bound (``--port 0`` picks a free port)."""
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}: see {log}")
        found = LISTENING.search(await asyncio.to_thread(_read, log))
        if found:
            return found.group(1)
        await asyncio.sleep(0.05)


async def wait_ready(url: str) -> None:
    """Until ``/health`` answers 200 (it answers 503 while the model loads)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def llama_server(spec: ServerSpec, log: Path) -> AsyncIterator[RunningServer]:
    """Run llama-server (its output to ``log``) until the block exits; ready when yielded."""
    binary = server_binary()
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is missing: run bench/llamacpp/build.sh")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(binary), *spec.args(), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        url = await asyncio.wait_for(_listening_url(proc, log), START_TIMEOUT_S)
        await asyncio.wait_for(wait_ready(url), START_TIMEOUT_S)
        yield RunningServer(url, proc, log)
    finally:
        await _stop(proc)


@dataclass(slots=True)
class Fleet:
    router: Process
    group: str
    servers: list[RunningServer] = field(default_factory=list)
    agents: list[Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.router.url}/{self.group}/v1"


async def _agent(fleet: Fleet, name: str, backend: RunningServer, parallel: int) -> Process:
    return await Process.start(
        f"agent {name}",
        "node_agent",
        [
            "--backend-url", backend.url, "--backend-kind", "llamacpp",
            "--max-parallel", str(parallel), "--router-url", fleet.router.url,
            "--group", fleet.group, "--name", name, "--host", "127.0.0.1", "--port", "0",
            "--gpu-source", "none", "--report-interval", "0.5",
        ],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def launch_fleet(
    spec: ServerSpec, servers: int, logs: Path, group: str = "llamacpp"
) -> AsyncIterator[Fleet]:
    """The router, ``servers`` llama-servers and an agent beside each; agents stop first."""
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        router = await Process.start(
            "router", "router", ["--host", "127.0.0.1", "--port", "0", "--default-group", group]
        )
        stack.push_async_callback(router.stop)
        fleet = Fleet(router, group)
        for i in range(servers):
            log = logs / f"llama-server-{i + 1}.log"
            fleet.servers.append(await stack.enter_async_context(llama_server(spec, log)))
        for i, server in enumerate(fleet.servers):
            agent = await _agent(fleet, f"llama-{i + 1}", server, spec.parallel)
            stack.push_async_callback(agent.stop)
            fleet.agents.append(agent)
        names = {f"llama-{i + 1}" for i in range(servers)}
        await wait_until_healthy(router.url, group, names)
        yield fleet


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from bench.llamacpp.tiny_gguf import write_tiny_model  # needs gguf, a dev dependency

    with tempfile.TemporaryDirectory(prefix="llama-fleet-") as tmp:
        model = args.model or write_tiny_model(Path(tmp) / "tiny.gguf")
        spec = ServerSpec(model, args.alias, args.parallel, args.ctx, args.threads)
        async with launch_fleet(spec, args.servers, args.logs) as fleet:
            print(f"FLEET READY {fleet.base_url}", flush=True)
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llamacpp.fleet")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alias", default="tiny")
    parser.add_argument("--model", type=Path, help="a GGUF (default: the tiny random model)")
    parser.add_argument("--logs", type=Path, default=Path("results/llamacpp-fleet"))
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
