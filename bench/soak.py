"""Soak: many concurrent streams held through the router, then many requests, watching memory.

``python -m bench.soak --streams 2000 --requests 100000`` starts an emulated node (vLLM face,
enough slots for every stream) and a router with it as a static node, each in its own process;
holds ``--streams`` streams open at once through the router and checks every one ends with
``[DONE]``; then sends ``--requests`` short requests (``--concurrency`` at a time) and samples
the router's resident memory (``/proc/<pid>/status``) every tenth of the way. It prints a JSON
summary: the peak RSS while holding the streams, RSS at each sample, and the growth from the
first sample after warm-up to the last, which stays flat when nothing leaks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import Process

MODEL = "llama3.1:8b"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


BATCH_DECAY_7B = 0.06  # bench/capacity.toml: each extra stream slows every stream by this


@contextlib.asynccontextmanager
async def _setup(streams: int, tok_s: float) -> AsyncIterator[tuple[Process, str]]:
    # The emulator slows every stream as the batch grows; ask for the single-stream rate that
    # leaves each of the held streams at about ``tok_s``.
    single_stream = tok_s * (1 + BATCH_DECAY_7B * (streams - 1))
    emulator = await Process.start(
        "emulator",
        "bench.emulator",
        ["--kind", "vllm", "--model", MODEL, "--gpu-gb", "80", "--slots", str(streams + 64),
         "--tok-s", str(single_stream), "--ttft-ms", "5", "--port", "0"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "router.toml"
        config.write_text(
            '[[groups]]\nname = "soak"\n[[groups.nodes]]\n'
            f'name = "node-1"\nbase_url = "{emulator.url}"\n'
            "[timeouts]\nconnect_s = 5\nfirst_byte_s = 60\nidle_s = 60\ntotal_s = 600\n"
        )
        router = await Process.start(
            "router", "router",
            ["--host", "127.0.0.1", "--port", "0", "--config", str(config),
             "--health-interval-s", "1", "--log-format", "json"],
        )  # fmt: skip
        try:
            yield router, f"{router.url}/soak/v1/chat/completions"
        finally:
            await router.stop()
            await emulator.stop()


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url, json=body) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.5)


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int) -> bool:
    body = {"model": MODEL, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    async with session.post(url, json=body) as resp:
        raw = await resp.read()
    return resp.status == 200 and raw.endswith(b"data: [DONE]\n\n")


async def hold_streams(router: Process, url: str, count: int, tokens: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _wait_ready(session, url)
        before = rss_mib(router.proc.pid)
        start = time.monotonic()
        tasks = [asyncio.create_task(_stream(session, url, tokens)) for _ in range(count)]
        peak = before
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mib(router.proc.pid))
            await asyncio.sleep(0.25)
        ok = sum(1 for t in tasks if t.result())
    return {
        "streams": count,
        "completed_with_done": ok,
        "seconds": round(time.monotonic() - start, 1),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak, 1),
    }


async def many_requests(router: Process, url: str, total: int, concurrency: int) -> dict[str, Any]:
    body = json.dumps(
        {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    headers = {"Content-Type": "application/json"}
    sent = errors = 0
    samples: list[tuple[int, float]] = []
    step = max(1, total // 10)
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal sent, errors
            while sent < total:
                sent += 1
                if sent % step == 0:
                    samples.append((sent, round(rss_mib(router.proc.pid), 1)))
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    errors += resp.status != 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - start
    growth = samples[-1][1] - samples[1][1] if len(samples) > 2 else 0.0
    return {
        "requests": total,
        "errors": errors,
        "requests_per_s": round(total / seconds, 1),
        "rss_samples_mib": samples,
        "rss_growth_after_warmup_mib": round(growth, 1),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    async with _setup(args.streams, args.tok_s) as (router, url):
        held = await hold_streams(router, url, args.streams, args.tokens)
        churn = await many_requests(router, url, args.requests, args.concurrency)
    return {"hold": held, "churn": churn}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=20, help="tokens per held stream")
    parser.add_argument(
        "--tok-s", type=float, default=2.0, help="per-stream token rate while all are held"
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    result = asyncio.run(_main(parser.parse_args()))
    json.dump(result, sys.stdout, indent=2)
    print()
    held = result["hold"]
    sys.exit(
        0 if held["completed_with_done"] == held["streams"] and not result["churn"]["errors"] else 1
    )


if __name__ == "__main__":
    main()
