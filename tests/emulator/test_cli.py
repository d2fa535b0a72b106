"""``python -m bench.emulator``: the ready line a launcher parses, and a clean stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from asyncio.subprocess import Process

import aiohttp

from .conftest import VLLM_MODEL


async def spawn(*args: str) -> Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.emulator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def first_line(stream: asyncio.StreamReader | None) -> list[str]:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), timeout=15)).decode().split()


async def stop(proc: Process) -> bytes:
    """SIGTERM, then the rest of stdout; the process must exit 0."""
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, err.decode()
    return out


async def usage_error(*args: str) -> bytes:
    """The stderr of a run that must exit with argparse's usage error (2)."""
    proc = await spawn(*args)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 2
    return err


class TestCommandLine:
    """The CLI prints one ready line with its URL, serves, and exits 0 on SIGTERM."""

    async def test_ready_line_serve_and_sigterm(self, http: aiohttp.ClientSession) -> None:
        proc = await spawn(
            "--kind", "vllm", "--model", VLLM_MODEL, "--tok-s", "500", "--ttft-ms", "5",
            "--port", "0",
        )  # fmt: skip
        try:
            words = await first_line(proc.stdout)
            assert words[:2] == ["EMULATOR", "READY"]
            assert words[2].startswith("http://127.0.0.1:")
            async with http.get(words[2] + "/health") as resp:
                assert resp.status == 200
        finally:
            out = await stop(proc)
        assert out == b""

    async def test_triton_prints_its_metrics_url_apart(self, http: aiohttp.ClientSession) -> None:
        proc = await spawn("--kind", "triton", "--model", "llama3.1:8b", "--metrics-port", "0")
        try:
            words = await first_line(proc.stdout)
            metrics_words = await first_line(proc.stderr)
            assert len(words) == 3
            assert words[:2] == ["EMULATOR", "READY"]
            assert metrics_words[:2] == ["EMULATOR", "METRICS"]
            async with http.get(words[2] + "/_emulator/state") as resp:
                assert (await resp.json())["metricsUrl"] == metrics_words[2]
            async with http.get(metrics_words[2]) as resp:
                assert "nv_inference_count" in await resp.text()
            async with http.get(words[2] + "/v2/health/ready") as resp:
                assert resp.status == 200
        finally:
            out = await stop(proc)
        assert out == b""

    async def test_metrics_port_is_a_triton_option(self) -> None:
        err = await usage_error("--kind", "tgi", "--model", VLLM_MODEL, "--metrics-port", "9000")
        assert b"--metrics-port is a triton option" in err

    async def test_bad_config_exits_with_usage_error(self) -> None:
        err = await usage_error("--kind", "ollama", "--model", "nope")
        assert b"unknown model(s) nope" in err
