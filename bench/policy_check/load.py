"""The open-loop client: each request leaves at its drawn arrival time (one pacer, no pool of
users), streamed, its TTFT read from the SSE events (:mod:`bench.sse`) into a
:class:`~bench.records.ClientRecord` with the node that served it and the dispatch lag."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.policy_check.fleet import MODEL, PROMPT_TOKENS
from bench.records import ClientRecord
from bench.sim.workload import Requests
from bench.stream_client import stream_into

REQUEST_TIMEOUT_S = 300.0


async def _one(session: aiohttp.ClientSession, url: str, tokens: int, lag: float) -> ClientRecord:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x" * (4 * PROMPT_TOKENS)}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    rec = ClientRecord(MODEL, url, tokens, time.time(), time.perf_counter())
    rec.dispatch_lag_s = lag
    await stream_into(session, url, body, rec)
    return rec


async def drive(base_url: str, reqs: Requests) -> list[ClientRecord]:
    """Send each request at its arrival time (one pacer, no user pool: an open loop)."""
    url = f"{base_url}/chat/completions"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks: list[asyncio.Task[ClientRecord]] = []
        start = time.perf_counter()
        for due, tokens in zip(reqs.arrival.tolist(), reqs.output.tolist(), strict=True):
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            lag = time.perf_counter() - start - due
            tasks.append(asyncio.create_task(_one(session, url, int(tokens), lag)))
        return list(await asyncio.gather(*tasks))
