"""``python -m bench instructions``: the router's own CPU instructions per request, counted by
valgrind's callgrind, at 1 node and at 16, for short requests and 16-chunk streams; with
``--baseline REV``, another revision's router counted the same way.

Requests a second on this machine move by tens of percent from one minute to the next, so a
cost difference of a few percent between two revisions hides in the noise of wall-clock
benchmarks (``python -m bench overhead``). An instruction count does not move with the
machine's speed: the same revision gives the same count within a few tenths of a percent. It
counts the router process's user-space instructions only (not the kernel's socket work, not the
time lost to cache misses), so it is the measure of what the router's own code costs, next to
the overhead benchmark's measure of what a client gets.

Each router runs under callgrind (about 50 times slower) with collection off; the fast emulated
node answers. Per path, wrk warms it up, then collection is switched on for a timed slice at 8
connections and the requests wrk completed divide the instructions counted. Health polls are
set 60 s apart so that background work, which runs at the same rate whatever the request rate,
stays out of the count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.baseline import baseline_tree
from bench.cluster import Process, wait_until_healthy
from bench.overhead.suite import OverheadSettings
from bench.overhead.wrk import lua_script
from bench.topology import (
    FLEET_GROUP,
    FLEET_NODES,
    NODE_NAME,
    STATIC_GROUP,
    NodeSettings,
    router_config,
)

CONNECTIONS = 8
WARMUP_S = 3
PATHS = {"1 node": STATIC_GROUP, "16 nodes": FLEET_GROUP}
HEALTH_INTERVAL_S = 60.0  # background work kept out of the count (see the module doc)
# Under callgrind a router takes tens of seconds to import and start.
START_TIMEOUT_S = 180.0


class ValgrindMissing(RuntimeError):
    """valgrind (callgrind) or wrk is not installed."""


@dataclass(frozen=True, slots=True)
class Count:
    """Instructions the router ran in one slice, and the requests completed in it."""

    instructions: int
    requests: int

    @property
    def per_request(self) -> float:
        return self.instructions / max(self.requests, 1)


def totals(dump: Path) -> int:
    """The instructions a callgrind dump holds: its ``totals:`` line (its ``summary:`` line, at
    the top, may say 0 for a dump taken on request)."""
    found: dict[str, int] = {}
    for line in dump.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(": ")
        if key in ("totals", "summary"):
            found[key] = int(value.split()[0])
    if not found:
        raise ValueError(f"{dump}: no totals line")
    return found["totals"] if "totals" in found else found["summary"]


class CountedRouter:
    """A router under callgrind, collection off until :meth:`count` switches it on."""

    def __init__(self, proc: Process, out: Path) -> None:
        self.proc = proc
        self.out = out
        self._dumps = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, label: str, config: Path, out: Path, source: Path | None
    ) -> AsyncIterator[CountedRouter]:
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={out}"]  # fmt: skip
        args = ["--config", str(config), "--host", "127.0.0.1", "--port", "0",
                "--default-group", STATIC_GROUP, "--log-format", "json"]  # fmt: skip
        proc = await Process.start(
            label, "router", args, log_path=out.with_suffix(".log"), source=source,
            prefix=prefix, ready_timeout_s=START_TIMEOUT_S,
        )  # fmt: skip
        try:
            await wait_until_healthy(proc.url, STATIC_GROUP, {NODE_NAME})
            await wait_until_healthy(proc.url, FLEET_GROUP, set(FLEET_NODES))
            yield cls(proc, out)
        finally:
            await proc.stop()

    async def _control(self, *args: str) -> None:
        control = await asyncio.create_subprocess_exec(
            "callgrind_control", *args, str(self.proc.proc.pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await control.wait() != 0:
            raise RuntimeError(f"callgrind_control {' '.join(args)} failed")

    async def count(self, url: str, script: str, seconds: int) -> Count:
        """Warm up on ``url``, then count one slice of ``seconds``."""
        await _wrk(url, script, WARMUP_S)
        await self._control("--zero")
        await self._control("--instr=on")
        requests = await _wrk(url, script, seconds)
        await self._control("--instr=off")
        await self._control("--dump")
        self._dumps += 1
        return Count(totals(Path(f"{self.out}.{self._dumps}")), requests)


async def _wrk(url: str, script: str, seconds: int) -> int:
    """Requests completed by wrk at :data:`CONNECTIONS` connections for ``seconds``."""
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s", "-s", script, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    line = next(x for x in out.decode().splitlines() if x.startswith("BENCHJSON "))
    summary = orjson.loads(line.split(" ", 1)[1])
    return int(summary["requests"] - summary["status_errors"])


async def measure(seconds: int, baseline: Path | None, folder: Path) -> dict[str, dict[str, float]]:
    """Instructions per request, by router (``router``, ``baseline``) and path
    (``short 1 node``, ``stream16 16 nodes``, ...)."""
    if shutil.which("valgrind") is None or shutil.which("wrk") is None:
        raise ValgrindMissing("python -m bench instructions needs valgrind and wrk installed")
    node = NodeSettings()
    bodies = OverheadSettings(node=node).bodies()
    trees: dict[str, Path | None] = {"router": None}
    if baseline is not None:
        trees["baseline"] = baseline
    emulator = await Process.start("emulator", "bench.emulator", node.args())
    counts: dict[str, dict[str, float]] = {}
    try:
        config = router_config(emulator.url, folder, health_interval_s=HEALTH_INTERVAL_S)
        for name, source in trees.items():
            out = folder / f"{name}.callgrind"
            async with CountedRouter.start(name, config, out, source) as router:
                counts[name] = {}
                for phase, body in bodies.items():
                    with lua_script(body) as script:
                        for path, group in PATHS.items():
                            url = f"{router.proc.url}/{group}/v1/completions"
                            got = await router.count(url, script, seconds)
                            counts[name][f"{phase} {path}"] = round(got.per_request)
                            _say(f"{name}, {phase} {path}: {got.per_request:,.0f} a request "
                                 f"({got.requests} requests)")  # fmt: skip
    finally:
        await emulator.stop()
    return counts


def ratios(counts: dict[str, dict[str, float]]) -> dict[str, float]:
    """16 nodes / 1 node for each router, and this router / the baseline on each path."""
    out: dict[str, float] = {}
    for name, by_path in counts.items():
        for phase in ("short", "stream16"):
            out[f"{name}: {phase} 16 nodes / 1 node"] = round(
                by_path[f"{phase} 16 nodes"] / by_path[f"{phase} 1 node"], 3
            )
    if "baseline" in counts:
        for path, value in counts["router"].items():
            out[f"router / baseline: {path}"] = round(value / counts["baseline"][path], 3)
    return out


def _say(text: str) -> None:
    print(f"[instructions] {text}", file=sys.stderr, flush=True)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "instructions", help="the router's instructions per request (callgrind), 1 and 16 nodes"
    )
    cmd.add_argument("--seconds", type=int, default=10, help="counted slice per path")
    cmd.add_argument("--baseline", metavar="REV", help="also count this git revision's router")
    cmd.add_argument("--out", type=Path, help="write the figures here as JSON")


async def run_cli(args: argparse.Namespace) -> int:
    try:
        with baseline_tree(args.baseline) as baseline, tempfile.TemporaryDirectory() as tmp:
            counts = await measure(args.seconds, baseline, Path(tmp))
    except ValgrindMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    figures = {"instructions_per_request": counts, "ratios": ratios(counts)}
    text = orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
