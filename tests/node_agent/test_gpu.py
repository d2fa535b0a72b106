from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest

from node_agent.app import serve
from node_agent.gpu import NvmlGpus, open_gpu_source
from node_protocol.wire import GpuReport, LoadReport

from .conftest import FakeBackend, agent_settings, free_port

H100 = GpuReport(
    index=0,
    name="NVIDIA H100 80GB HBM3",
    memory_total_bytes=85_520_809_984,
    memory_used_bytes=10_000_000_000,
    utilization_pct=37.0,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class TestNvmlFallback:
    """Without an NVIDIA driver the NVML source reports no GPUs, logs once, and never crashes."""

    async def test_no_driver(
        self, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="node_agent.gpu")
        source = await open_gpu_source("nvml", session, "http://127.0.0.1:1", 1.0)
        try:
            if isinstance(source, NvmlGpus):
                gpus = await source.read()
                assert all(g.memory_total_bytes > 0 for g in gpus)
                pytest.skip("an NVIDIA driver is present: the fallback path cannot be exercised")
            assert source.name == "none"
            assert await source.read() == ()
            assert await source.read() == ()
            infos = [r for r in caplog.records if "NVML" in r.getMessage()]
            assert len(infos) == 1
            assert infos[0].levelno == logging.INFO
        finally:
            await source.close()


class TestEmulatedGpus:
    """On a CPU box the emulator's /_emulator/gpus stands in for NVML."""

    async def test_emulated_source_in_report(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = vllm
        fake.state.emulator_gpus = [H100.to_json()]
        async with serve(agent_settings(url, gpu_source="emulated")) as agent:
            r = await session.get(f"{agent.url}/status")
            report = LoadReport.from_json(await r.json())
        assert report.gpus == (H100,)
        assert report.gpus[0].memory_free_bytes == 75_520_809_984

    async def test_auto_picks_emulator_or_none(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = vllm
        source = await open_gpu_source("auto", session, url, 1.0)
        if isinstance(source, NvmlGpus):
            await source.close()
            pytest.skip("an NVIDIA driver is present: auto uses NVML")
        assert await source.read() == ()  # 404: settles on no GPUs
        fake.state.emulator_gpus = [H100.to_json()]
        assert await source.read() == ()  # settled, not asked again
        source = await open_gpu_source("auto", session, url, 1.0)
        assert await source.read() == (H100,)

    async def test_auto_waits_for_a_backend_that_is_down(
        self, session: aiohttp.ClientSession
    ) -> None:
        source = await open_gpu_source("auto", session, f"http://127.0.0.1:{free_port()}", 0.5)
        if isinstance(source, NvmlGpus):
            await source.close()
            pytest.skip("an NVIDIA driver is present: auto uses NVML")
        assert await source.read() == ()
        assert source.name == "auto"

    async def test_bad_emulator_body_warns_once(
        self,
        vllm: tuple[FakeBackend, str],
        session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        fake, url = vllm
        fake.state.emulator_gpus = [{"index": 0}]
        source = await open_gpu_source("emulated", session, url, 1.0)
        assert await source.read() == ()
        assert await source.read() == ()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "name" in warnings[0].getMessage()


class FakeNvml:
    """Stands in for the pynvml module (same function names) on a box with no driver."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return b"NVIDIA A100-SXM4-40GB" if handle == 0 else "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=40 * 2**30, used=(handle + 1) * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=55, memory=10)

    def nvmlShutdown(self) -> None:
        self.shut_down = True


class TestNvmlReadings:
    """NVML readings become GpuReports; unsupported utilisation is unknown, not zero."""

    async def test_read_and_close(self) -> None:
        nvml = FakeNvml()
        source = NvmlGpus(nvml)
        a100, h100 = await source.read()
        assert a100 == GpuReport(0, "NVIDIA A100-SXM4-40GB", 40 * 2**30, 2**30, 55.0)
        assert h100.name == "NVIDIA H100 80GB HBM3"
        assert h100.utilization_pct is None
        assert h100.memory_used_bytes == 2 * 2**30
        await source.close()
        assert nvml.shut_down
        assert await source.read() == ()
