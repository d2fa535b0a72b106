"""GPU probe: NVML when a driver is present, the emulator's ``/_emulator/gpus`` on a CPU box.

Sources (``gpu_source``):

- ``nvml``: pynvml, initialised once; every read runs the blocking calls in a worker thread.
  Without an NVIDIA driver it reports no GPUs (logged once at info level), never a crash. Used
  memory includes what the driver reserves (about 480 MiB on an H100), which no model can
  have: it is ``nvidia-smi``'s used + reserved, and total - used is ``nvidia-smi``'s free
  (checked on an H100, idle and with 6 and 10 GiB held: ``python -m node_agent.gpu_check``).
- ``emulated``: ``GET {backend_url}/_emulator/gpus`` → ``{"gpus": [GpuReport json, ...]}``.
- ``none``: no GPUs.
- ``auto``: NVML if it initialises, else the emulator path if the backend serves it, else none.
  The emulator is asked again while the backend does not answer at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp
import orjson

from node_protocol.wire import GpuReport, WireError

log = logging.getLogger("node_agent.gpu")

EMULATOR_PATH = "/_emulator/gpus"


class GpuSource(Protocol):
    """Reads the node's GPUs."""

    name: str

    async def read(self) -> tuple[GpuReport, ...]: ...

    async def close(self) -> None: ...


class NoGpus:
    """No GPU information (CPU-only node or probing disabled)."""

    name = "none"

    async def read(self) -> tuple[GpuReport, ...]:
        return ()

    async def close(self) -> None:
        return None


def _nvml_snapshot(nvml: Any) -> tuple[GpuReport, ...]:
    """One blocking pass over every device (runs in a worker thread)."""
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):  # older bindings return bytes
            name = name.decode(errors="replace")
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            utilization = None  # not supported on this device (e.g. some MIG slices)
        gpus.append(
            GpuReport(
                index=index,
                name=str(name),
                memory_total_bytes=int(memory.total),
                memory_used_bytes=int(memory.used),
                utilization_pct=utilization,
            )
        )
    return tuple(gpus)


class NvmlGpus:
    """NVML through pynvml; use :meth:`open` (it returns None when no driver is present)."""

    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._closed = False
        self._failed = False

    @classmethod
    async def open(cls) -> NvmlGpus | None:
        try:
            import pynvml
        except ImportError:
            log.info("pynvml is not installed: no NVML GPU readings")
            return None
        try:
            await asyncio.to_thread(pynvml.nvmlInit)
        except pynvml.NVMLError as exc:
            log.info("NVML unavailable (%s): no NVIDIA driver, reporting no NVML GPUs", exc)
            return None
        return cls(pynvml)

    async def read(self) -> tuple[GpuReport, ...]:
        if self._closed:
            return ()
        try:
            gpus = await asyncio.to_thread(_nvml_snapshot, self._nvml)
        except self._nvml.NVMLError as exc:
            if not self._failed:
                log.warning("NVML read failed: %s", exc)
                self._failed = True
            return ()
        self._failed = False
        return gpus

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.to_thread(self._nvml.nvmlShutdown)
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)


class EmulatedGpus:
    """The emulator's GPUs, read from ``GET {backend_url}/_emulator/gpus``."""

    name = "emulated"

    def __init__(self, session: aiohttp.ClientSession, backend_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = backend_url.rstrip("/") + EMULATOR_PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._warned = False

    @property
    def url(self) -> str:
        return self._url

    async def fetch(self) -> tuple[GpuReport, ...] | None:
        """The GPUs; None if the backend cannot be reached; raises LookupError on a non-200."""
        try:
            async with self._session.get(self._url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise LookupError(f"{self._url} answered {resp.status}")
                body = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.debug("emulator GPUs unavailable: %r", exc)
            return None
        except orjson.JSONDecodeError as exc:
            raise LookupError(f"{self._url} sent invalid JSON") from exc
        try:
            gpus = body["gpus"] if isinstance(body, dict) else None
            if not isinstance(gpus, list):
                raise WireError("'gpus' must be a list")
            return tuple(GpuReport.from_json(g) for g in gpus)
        except WireError as exc:
            raise LookupError(f"{self._url}: {exc}") from exc

    async def read(self) -> tuple[GpuReport, ...]:
        try:
            gpus = await self.fetch()
        except LookupError as exc:
            if not self._warned:
                log.warning("cannot read emulated GPUs: %s", exc)
                self._warned = True
            return ()
        self._warned = False
        return gpus or ()

    async def close(self) -> None:
        return None


class AutoEmulatedGpus:
    """``auto`` after NVML failed: settle on the emulator or on none at the first clear answer."""

    name = "auto"

    def __init__(self, emulated: EmulatedGpus) -> None:
        self._emulated = emulated
        self._settled: GpuSource | None = None

    async def read(self) -> tuple[GpuReport, ...]:
        if self._settled is not None:
            return await self._settled.read()
        try:
            gpus = await self._emulated.fetch()
        except LookupError as exc:
            log.info(
                "no GPU source: NVML unavailable and the backend has no emulator GPUs (%s)", exc
            )
            self._settled = NoGpus()
            return ()
        if gpus is None:
            return ()  # backend not answering yet: ask again next time
        log.info("GPU source: emulator at %s", self._emulated.url)
        self._settled = self._emulated
        return gpus

    async def close(self) -> None:
        return None


async def open_gpu_source(
    source: str, session: aiohttp.ClientSession, backend_url: str, timeout_s: float
) -> GpuSource:
    """The GPU source for a ``gpu_source`` setting; never raises for a missing driver."""
    if source == "none":
        return NoGpus()
    if source == "emulated":
        return EmulatedGpus(session, backend_url, timeout_s)
    nvml = await NvmlGpus.open()
    if nvml is not None:
        return nvml
    if source == "nvml":
        return NoGpus()
    return AutoEmulatedGpus(EmulatedGpus(session, backend_url, timeout_s))
