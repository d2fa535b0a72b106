"""The overhead load generator (its own process) against a real emulated node."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from bench.emulator.app import RunningEmulator
from tests.bench.conftest import MODEL


async def _loadgen(plan: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.overhead.loadgen",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(orjson.dumps(plan))
    assert proc.returncode == 0
    result: dict[str, Any] = orjson.loads(out)
    return result


class TestLoadgen:
    """The aiohttp generator measures latency rounds and throughput (wrk's fallback)."""

    async def test_latency_rounds(self, emulator: RunningEmulator) -> None:
        """Every round yields TTFB <= TTFT <= E2E for each target."""
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True}
        url = f"{emulator.url}/v1/completions"
        plan = {
            "kind": "latency",
            "targets": {"a": url, "b": url},
            "body": body,
            "rounds": 4,
            "warmup_rounds": 1,
        }
        result = await _loadgen(plan)
        for rows in result["targets"].values():
            assert len(rows) == 4
            for row in rows:
                assert row["ok"]
                assert 0 < row["ttfb"] <= row["ttft"] <= row["e2e"]
                assert row["overhead_ms"] is None  # no router on this path

    async def test_throughput(self, emulator: RunningEmulator) -> None:
        """Several connections for a second complete requests without errors."""
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        plan = {
            "kind": "throughput",
            "url": f"{emulator.url}/v1/completions",
            "body": body,
            "connections": 4,
            "duration_s": 1.0,
        }
        result = await _loadgen(plan)
        assert result["completed"] > 10
        assert result["errors"] == 0
