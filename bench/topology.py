"""The small topologies the calibration and overhead benchmarks run: one emulated node, and in
front of it the router (a static node, no agent), the router through an agent, the bare
reference proxy and nginx (when installed), each as its own process.

Children write their logs to files in the run's folder (never to this terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.cluster import Process, wait_until_healthy

STATIC_GROUP = "static"
AGENT_GROUP = "agent"
FLEET_GROUP = "fleet"
NODE_NAME = "node"
# The fleet path: the same fast node behind this many static nodes, so every decision ranks a
# fleet's worth of candidates and every per-node cost (health polls, series, pools) is paid.
FLEET_SIZE = 16
FLEET_NODES = tuple(f"{NODE_NAME}-{i:02d}" for i in range(FLEET_SIZE))


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point this process's fd 2 at ``path`` while children are started (they inherit it)."""
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The emulated node every path ends at."""

    model: str = "llama3.1:8b"
    tok_s: float = 5000.0
    ttft_ms: float = 0.0
    slots: int = 512

    def args(self) -> list[str]:
        return [
            "--kind",
            "vllm",
            "--model",
            self.model,
            "--tok-s",
            str(self.tok_s),
            "--ttft-ms",
            str(self.ttft_ms),
            "--slots",
            str(self.slots),
            "--port",
            "0",
        ]


@dataclass(frozen=True, slots=True)
class RouterWrapper:
    """Which program runs the router: the real one, or the slowed wrapper with a planted delay."""

    delay_ms: float = 0.0
    burn_ms: float = 0.0

    def module_and_args(self) -> tuple[str, list[str]]:
        if not self.delay_ms and not self.burn_ms:
            return "router", []
        return "bench.slowed_router", [
            "--delay-ms",
            str(self.delay_ms),
            "--burn-ms",
            str(self.burn_ms),
            "--",
        ]


@dataclass(slots=True)
class Topology:
    """OpenAI base URLs (ending in ``/v1``) by path name: direct, router, router+agent, ..."""

    bases: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_config(node_url: str, folder: Path, health_interval_s: float = 1.0) -> Path:
    """The routers' config (``folder/router.toml``): the static group of one node, the agent
    group, and the fleet group of :data:`FLEET_SIZE` static nodes, all at ``node_url``."""
    # Absolute: a baseline router runs in its own tree, not in this working directory.
    path = folder.resolve() / "router.toml"
    path.write_text(
        f"health_interval_s = {health_interval_s}\n"
        f'[[groups]]\nname = "{STATIC_GROUP}"\n'
        f'[[groups.nodes]]\nname = "{NODE_NAME}"\nbase_url = "{node_url}"\n'
        f'[[groups]]\nname = "{AGENT_GROUP}"\n'
        f'[[groups]]\nname = "{FLEET_GROUP}"\n'
        + "".join(
            f'[[groups.nodes]]\nname = "{name}"\nbase_url = "{node_url}"\n' for name in FLEET_NODES
        ),
        encoding="utf-8",
    )
    return path


NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream node {{ server {upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


@contextlib.asynccontextmanager
async def nginx(upstream: str) -> AsyncIterator[str | None]:
    """nginx ``proxy_pass`` to ``upstream`` (host:port); yields None when not installed."""
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, upstream=upstream, port=port))
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            "-p",
            tmp,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _wait_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGQUIT)
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_port(port: int, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def _agent(backend_url: str, router_url: str) -> Process:
    args = ["--backend-url", backend_url, "--router-url", router_url, "--group", AGENT_GROUP,
            "--name", f"{NODE_NAME}-agent", "--host", "127.0.0.1", "--port", "0",
            "--gpu-source", "emulated", "--report-interval", "0.5"]  # fmt: skip
    return await Process.start("agent", "node_agent", args)


async def _router(config: Path, wrapper: RouterWrapper, source: Path | None = None) -> Process:
    module, pre = wrapper.module_and_args()
    args = [*pre, "--config", str(config), "--host", "127.0.0.1", "--port", "0",
            "--default-group", STATIC_GROUP, "--log-format", "json"]  # fmt: skip
    return await Process.start("baseline" if source else "router", module, args, source=source)


@contextlib.asynccontextmanager
async def node_paths(
    node: NodeSettings,
    logs: Path,
    *,
    agent: bool = True,
    references: bool = True,
    wrapper: RouterWrapper | None = None,
    baseline: Path | None = None,
) -> AsyncIterator[Topology]:
    """Start the node and every path to it; stop them all when the block exits. ``baseline``:
    another revision's tree (:mod:`bench.baseline`), whose router is started beside this one
    with the same settings (paths ``baseline`` and ``baseline 16 nodes``)."""
    started: list[Process] = []
    topo = Topology()
    async with contextlib.AsyncExitStack() as stack:
        try:
            with stderr_to(logs / "children.log"):
                emu = await Process.start("emulator", "bench.emulator", node.args())
                started.append(emu)
                config = router_config(emu.url, logs)
                router = await _router(config, wrapper or RouterWrapper())
                started.append(router)
                topo.bases["direct"] = f"{emu.url}/v1"
                topo.bases["router"] = f"{router.url}/{STATIC_GROUP}/v1"
                topo.bases["router 16 nodes"] = f"{router.url}/{FLEET_GROUP}/v1"
                routers = [router]
                if baseline is not None:
                    other = await _router(config, RouterWrapper(), baseline)
                    started.append(other)
                    routers.append(other)
                    topo.bases["baseline"] = f"{other.url}/{STATIC_GROUP}/v1"
                    topo.bases["baseline 16 nodes"] = f"{other.url}/{FLEET_GROUP}/v1"
                if agent:
                    started.append(await _agent(emu.url, router.url))
                    topo.bases["router+agent"] = f"{router.url}/{AGENT_GROUP}/v1"
                if references:
                    proxy = await Process.start(
                        "proxy", "bench.reference_proxy", ["--upstream", emu.url]
                    )
                    started.append(proxy)
                    topo.bases["bare proxy"] = f"{proxy.url}/v1"
                    ngx = await stack.enter_async_context(nginx(emu.url.split("//", 1)[1]))
                    if ngx is None:
                        topo.notes.append("nginx not installed: the nginx reference was skipped")
                    else:
                        topo.bases["nginx"] = f"{ngx}/v1"
            for one in routers:
                await wait_until_healthy(one.url, STATIC_GROUP, {NODE_NAME})
                await wait_until_healthy(one.url, FLEET_GROUP, set(FLEET_NODES))
            if agent:
                await wait_until_healthy(router.url, AGENT_GROUP, {f"{NODE_NAME}-agent"})
            yield topo
        finally:
            for proc in sorted(started, key=lambda p: p.label != "agent"):
                await proc.stop()
