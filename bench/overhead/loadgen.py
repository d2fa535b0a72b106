"""``python -m bench.overhead.loadgen``: a plan (JSON on stdin) in, measurements (JSON) out.

Runs in its own process on uvloop so the client does not share a core's time slices with the
harness. ``latency``: concurrency 1, rounds of one streamed request per target in shuffled
order; per request TTFB, TTFT, E2E (s) and the router's ``X-Router-Overhead-Ms``.
``throughput``: ``connections`` loops sending the same request to one URL for ``duration_s``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import aiohttp
import orjson
import uvloop

from bench.records import ClientRecord
from bench.sse import SseDecoder, StreamTally

HEADERS = {"Content-Type": "application/json"}


async def _one_stream(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    record = ClientRecord(
        model="", entry="", max_tokens=0, wall_send=time.time(), t_send=time.perf_counter()
    )
    tally = StreamTally(record)
    decoder = SseDecoder()
    async with session.post(url, data=body, headers=HEADERS) as resp:
        record.t_headers = time.perf_counter()
        overhead = resp.headers.get("X-Router-Overhead-Ms")
        async for line in resp.content:
            data = decoder.feed_line(line)
            if data is not None:
                tally.event(data, time.perf_counter())
        tally.finish(time.perf_counter())
        ok = resp.status == 200 and record.error is None and record.t_last_token is not None
    if not ok or record.t_first_token is None or record.t_last_token is None:
        return {"ok": False}
    return {
        "ok": True,
        "ttfb": record.t_headers - record.t_send,
        "ttft": record.t_first_token - record.t_send,
        "e2e": record.t_last_token - record.t_send,
        "overhead_ms": None if overhead is None else float(overhead),
    }


async def latency(plan: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, str] = plan["targets"]
    body = orjson.dumps(plan["body"])
    rng = random.Random(plan.get("seed", 1))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for round_no in range(plan["warmup_rounds"] + plan["rounds"]):
            rng.shuffle(names)
            for name in names:
                try:
                    result = await _one_stream(session, targets[name], body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result = {"ok": False, "error": repr(exc)}
                if round_no >= plan["warmup_rounds"]:
                    out[name].append(result)
    return {"targets": out}


async def throughput(plan: dict[str, Any]) -> dict[str, Any]:
    url, body = plan["url"], orjson.dumps(plan["body"])
    deadline = time.perf_counter() + plan["duration_s"]
    counts = {"completed": 0, "errors": 0}

    async def loop(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            try:
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    await resp.read()
                    counts["completed" if resp.status == 200 else "errors"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=plan["connections"])
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(loop(session) for _ in range(plan["connections"])))
    return {**counts, "elapsed_s": time.perf_counter() - start}


def main() -> None:
    plan = orjson.loads(sys.stdin.buffer.read())
    job = latency if plan["kind"] == "latency" else throughput
    result = uvloop.run(job(plan))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()
