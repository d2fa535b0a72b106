from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from .conftest import FakeBackend, FakeRouter

ROOT = Path(__file__).resolve().parents[2]


class TestCommandLine:
    """`python -m node_agent` prints one AGENT READY line, serves, and deregisters on SIGTERM."""

    async def test_ready_line_and_sigterm(
        self, ollama: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = ollama
        fake, router_url = router
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_AGENT_")}
        env["InferenceNode__GroupName"] = "seed-group"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node_agent",
            "--backend-url",
            backend,
            "--router-url",
            router_url,
            "--name",
            "cli-node",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--gpu-source",
            "none",
            "--report-interval",
            "0.05",
            "--log-level",
            "warning",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(15):
                line = (await proc.stdout.readline()).decode()
            assert line.startswith("AGENT READY http://127.0.0.1:")
            url = line.split()[-1]
            async with aiohttp.ClientSession() as client:
                r = await client.get(f"{url}/health")
                assert (r.status, await r.json()) == (200, {"status": "ok"})
            await fake.wait_for(lambda: len(fake.reports) >= 1, within=10)
            assert fake.registrations[0]["group"] == "seed-group"
            assert fake.registrations[0]["baseUrl"] == url
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                rest, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert rest == b""  # exactly one line on stdout
            assert fake.deletes == ["node-cli-node"]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def test_bad_settings_exit_2(self) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("NODE_AGENT_", "Inference"))
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node_agent",
            "--backend-url",
            "localhost:11434",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(15):
            out, err = await proc.communicate()
        assert proc.returncode == 2
        assert b"backend_url" in err
        assert out == b""
