"""``python -m bench.emulator``: the ready line a launcher parses, and a clean stop."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp

from .conftest import VLLM_MODEL


class TestCommandLine:
    """The CLI prints one ready line with its URL, serves, and exits 0 on SIGTERM."""

    async def test_ready_line_serve_and_sigterm(self, http: aiohttp.ClientSession) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.emulator", "--kind", "vllm", "--model", VLLM_MODEL,
            "--tok-s", "500", "--ttft-ms", "5", "--port", "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
            words = line.decode().split()
            assert words[:2] == ["EMULATOR", "READY"]
            assert words[2].startswith("http://127.0.0.1:")
            async with http.get(words[2] + "/health") as resp:
                assert resp.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, err.decode()
        assert out == b""

    async def test_bad_config_exits_with_usage_error(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.emulator", "--kind", "ollama", "--model", "nope",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
        assert proc.returncode == 2
        assert b"unknown model(s) nope" in err
