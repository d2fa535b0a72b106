"""Throughput slices: ``wrk`` with a Lua script when installed (a C client leaves the CPU to
the servers under test), else the aiohttp ``loadgen``, each run as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.loadrun import cpu_seconds

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,"
    .. "\\"status_errors\\":%d}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True, slots=True)
class Slice:
    """One throughput measurement: completed requests per second, errors, generator CPU."""

    rps: float
    errors: int
    generator_cpu_percent: float


@contextlib.contextmanager
def lua_script(body: dict[str, Any]) -> Iterator[str]:
    """A wrk script that posts ``body`` and prints a JSON summary line at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        path = Path(folder) / "post.lua"
        path.write_text(LUA.format(body=orjson.dumps(body).decode()), encoding="utf-8")
        yield str(path)


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp"


async def _run(argv: list[str], stdin: bytes | None) -> tuple[bytes, float, float]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    loop = asyncio.get_running_loop()
    start, cpu0 = loop.time(), cpu_seconds(proc.pid)
    cpu1 = cpu0
    communicate = asyncio.ensure_future(proc.communicate(stdin))
    while not communicate.done():
        cpu1 = cpu_seconds(proc.pid) or cpu1
        await asyncio.wait({communicate}, timeout=0.25)
    out, _ = communicate.result()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
    return out, loop.time() - start, cpu1 - cpu0


async def measure(url: str, body: dict[str, Any], connections: int, duration_s: float) -> Slice:
    """Saturate ``url`` with ``connections`` keep-alive connections for ``duration_s``."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        with lua_script(body) as script:
            out, elapsed, cpu = await _run(
                [
                    wrk,
                    "-t1",
                    f"-c{connections}",
                    f"-d{max(1, round(duration_s))}s",
                    "--timeout",
                    "10s",
                    "-s",
                    script,
                    url,
                ],
                None,
            )
        line = next(x for x in out.decode().splitlines() if x.startswith("BENCHJSON "))
        res = orjson.loads(line.split(" ", 1)[1])
        ok = res["requests"] - res["status_errors"]
        return Slice(
            ok / (res["duration_us"] / 1e6),
            res["errors"] + res["status_errors"],
            100 * cpu / elapsed,
        )
    plan = {
        "kind": "throughput",
        "url": url,
        "body": body,
        "connections": connections,
        "duration_s": duration_s,
    }
    out, elapsed, cpu = await _run(
        [sys.executable, "-m", "bench.overhead.loadgen"], orjson.dumps(plan)
    )
    res = orjson.loads(out)
    return Slice(res["completed"] / res["elapsed_s"], res["errors"], 100 * cpu / elapsed)


async def latency_rounds(plan: dict[str, Any]) -> dict[str, Any]:
    """The paired concurrency-1 latency run, in the loadgen process."""
    out, _, _ = await _run(
        [sys.executable, "-m", "bench.overhead.loadgen"], orjson.dumps({"kind": "latency", **plan})
    )
    result: dict[str, Any] = orjson.loads(out)
    return result
