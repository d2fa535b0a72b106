"""A local cluster from a spec: emulated backends, an agent beside each, and the router.

``python -m bench.cluster --spec bench/clusters/demo.toml`` starts every process, waits until
every node is healthy at the router, prints the endpoint and a ready-to-paste ``curl``, and stops
everything cleanly on Ctrl-C (agents first, so they deregister). Each part runs as its own
process, as it would on real machines; ports are picked by the OS unless the spec fixes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    kind: str
    models: tuple[str, ...]
    gpu_gb: tuple[float, ...] = (24.0,)
    tok_s: float | None = None
    ttft_ms: float | None = None
    slots: int | None = None
    load_time_scale: float | None = None

    def emulator_args(self) -> list[str]:
        args = ["--kind", self.kind]
        for model in self.models:
            args += ["--model", model]
        for gb in self.gpu_gb:
            args += ["--gpu-gb", str(gb)]
        optional = {
            "--tok-s": self.tok_s,
            "--ttft-ms": self.ttft_ms,
            "--slots": self.slots,
            "--load-time-scale": self.load_time_scale,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        return args


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    group: str
    nodes: tuple[NodeSpec, ...]
    router_host: str = "127.0.0.1"
    router_port: int = 0
    router_args: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = field(default=("--report-interval", "0.5"))

    @classmethod
    def from_toml(cls, path: Path, *, router_port: int | None = None) -> ClusterSpec:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        router = data.get("router", {})
        nodes = tuple(
            NodeSpec(
                name=str(n["name"]),
                kind=str(n.get("kind", "vllm")),
                models=tuple(n["models"]),
                gpu_gb=tuple(float(g) for g in n.get("gpu_gb", [24])),
                tok_s=n.get("tok_s"),
                ttft_ms=n.get("ttft_ms"),
                slots=n.get("slots"),
                load_time_scale=n.get("load_time_scale"),
            )
            for n in data.get("nodes", [])
        )
        if not nodes:
            raise ValueError(f"{path}: a cluster spec needs at least one [[nodes]] entry")
        return cls(
            group=str(data.get("group", "inference-cluster")),
            nodes=nodes,
            router_host=str(router.get("host", "127.0.0.1")),
            router_port=router_port if router_port is not None else int(router.get("port", 0)),
            router_args=tuple(router.get("args", [])),
        )


class Process:
    """A child process that announces its URL with one ``<WHO> READY <url>`` stdout line."""

    def __init__(self, label: str, proc: asyncio.subprocess.Process) -> None:
        self.label = label
        self.proc = proc
        self.url = ""
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        label: str,
        module: str,
        args: list[str],
        *,
        log_path: Path | None = None,
        source: Path | None = None,
        prefix: list[str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> Process:
        """Start ``python -m module args``; its stderr (its log) goes to ``log_path`` if given.
        ``source``: the folder the module is imported from (another revision's tree), instead
        of this checkout; ``prefix``: a program that runs the interpreter (a profiler)."""
        env = None
        if source is not None:
            env = {**os.environ, "PYTHONPATH": str(source)}
        with contextlib.ExitStack() as files:
            log = None if log_path is None else files.enter_context(log_path.open("ab"))
            proc = await asyncio.create_subprocess_exec(
                *(prefix or ()), sys.executable, "-m", module, *args,
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=source, env=env,
            )  # fmt: skip
        child = cls(label, proc)
        try:
            child.url = await asyncio.wait_for(child._ready_line(), ready_timeout_s)
        except BaseException:
            await child.stop()
            raise
        child._drain = asyncio.create_task(child._discard_output())
        return child

    async def _ready_line(self) -> str:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.label} exited before it was ready")
            words = line.decode().split()
            if len(words) == 3 and words[1] == "READY":
                return words[2]

    async def _discard_output(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


@dataclass(slots=True)
class Cluster:
    spec: ClusterSpec
    router: Process
    emulators: dict[str, Process]
    agents: dict[str, Process]

    @property
    def group_url(self) -> str:
        return f"{self.router.url}/{self.spec.group}"

    @property
    def base_url(self) -> str:
        return f"{self.group_url}/v1"


async def wait_until_healthy(router_url: str, group: str, names: set[str]) -> None:
    """Poll the router's group view until every named node is healthy."""
    url = f"{router_url}/api/server-groups/{group}/nodes"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        nodes = (await resp.json())["nodes"]
                        healthy = {n["name"] for n in nodes if n["status"] == "healthy"}
                        if names <= healthy:
                            return
            if loop.time() > deadline:
                raise TimeoutError(
                    f"nodes {sorted(names)} not all healthy after {READY_TIMEOUT_S}s"
                )
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def launch(spec: ClusterSpec) -> AsyncIterator[Cluster]:
    """Start the whole cluster; stop it (agents, emulators, router) when the block exits."""
    started: list[Process] = []
    try:
        router = await Process.start(
            "router",
            "router",
            [
                "--host",
                spec.router_host,
                "--port",
                str(spec.router_port),
                "--default-group",
                spec.group,
                *spec.router_args,
            ],
        )
        started.append(router)
        emulators: dict[str, Process] = {}
        agents: dict[str, Process] = {}
        for node in spec.nodes:
            emu = await Process.start(
                f"emulator {node.name}", "bench.emulator", [*node.emulator_args(), "--port", "0"]
            )
            started.append(emu)
            emulators[node.name] = emu
        for node in spec.nodes:
            agent = await Process.start(
                f"agent {node.name}",
                "node_agent",
                [
                    "--backend-url",
                    emulators[node.name].url,
                    "--router-url",
                    router.url,
                    "--group",
                    spec.group,
                    "--name",
                    node.name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--gpu-source",
                    "emulated",
                    *spec.agent_args,
                ],
            )
            started.append(agent)
            agents[node.name] = agent
        await wait_until_healthy(router.url, spec.group, {n.name for n in spec.nodes})
        yield Cluster(spec=spec, router=router, emulators=emulators, agents=agents)
    finally:
        agents_first = sorted(started, key=lambda p: not p.label.startswith("agent"))
        for proc in agents_first:
            await proc.stop()


def _banner(cluster: Cluster) -> str:
    model = cluster.spec.nodes[0].models[0]
    lines = [
        "",
        f"Inference router ready: {cluster.base_url}",
        f"  nodes: {', '.join(n.name for n in cluster.spec.nodes)}",
        f"  models: {', '.join(sorted({m for n in cluster.spec.nodes for m in n.models}))}",
        "",
        "Try it:",
        f"  curl -N {cluster.base_url}/chat/completions \\",
        "    -H 'Content-Type: application/json' -H 'X-Octopus-Tenant-Id: demo' \\",
        f'    -d \'{{"model": "{model}", "stream": true, '
        '"messages": [{"role": "user", "content": "Hello"}]}\'',
        "",
        f"Nodes: {cluster.router.url}/api/server-groups/{cluster.spec.group}/nodes",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def _run(spec: ClusterSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with launch(spec) as cluster:
        print(_banner(cluster), flush=True)
        await stop.wait()
        print("stopping the cluster...", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--spec", type=Path, default=Path("bench/clusters/demo.toml"))
    parser.add_argument("--port", type=int, help="router port (overrides the spec)")
    args = parser.parse_args()
    spec = ClusterSpec.from_toml(args.spec, router_port=args.port)
    asyncio.run(_run(spec))


if __name__ == "__main__":
    main()
