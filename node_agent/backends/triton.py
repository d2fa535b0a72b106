"""NVIDIA Triton (KServe v2 HTTP): readiness, the repository index and the metrics port.

Facts: ``GET /v2/health/ready`` answers 200 when ready, **400** when
not (a model of the repository is not ready under ``--strict-readiness``) and 503
``{"error":"Server exiting"}`` while shutting down. ``POST /v2/repository/index`` returns a JSON
array of ``{"name", "version"?, "state"?, "reason"?}``; loaded ⇔ ``state == "READY"``, and a
model never loaded is listed with its name only. Metrics are on a separate port (8002 by
default): ``nv_inference_pending_request_count`` per model is the queue, and the DCGM gauges
``nv_gpu_memory_total_bytes`` / ``nv_gpu_memory_used_bytes`` / ``nv_gpu_utilization`` per
``gpu_uuid`` give the GPUs when NVML is absent. The TensorRT-LLM backend adds
``nv_trt_llm_request_metrics`` and ``nv_trt_llm_kv_cache_block_metrics`` (running requests and
KV blocks); other backends expose no running count and no KV usage (unknown, None).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from yarl import URL

from node_protocol.wire import GpuReport, ModelReport

from .base import Backend, BackendFacts, Health, decode_json, str_field
from .prometheus_text import Scrape, parse_gauges

METRICS_PORT = 8002
PENDING = "nv_inference_pending_request_count"
GPU_TOTAL = "nv_gpu_memory_total_bytes"
GPU_USED = "nv_gpu_memory_used_bytes"
GPU_UTIL = "nv_gpu_utilization"
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"
_GAUGES = (PENDING, GPU_TOTAL, GPU_USED, GPU_UTIL, TRT_REQUESTS, TRT_KV_BLOCKS)


def default_metrics_url(base_url: str) -> str:
    """Triton's metrics endpoint for an HTTP endpoint: the same host, port 8002."""
    return str(URL(base_url).with_port(METRICS_PORT).with_path("/metrics"))


def gpus_from_scrape(scrape: Scrape) -> tuple[GpuReport, ...]:
    """One report per ``gpu_uuid`` that has both memory gauges, in scrape order."""
    used = {s.labels.get("gpu_uuid", ""): s.value for s in scrape.samples.get(GPU_USED, ())}
    util = {s.labels.get("gpu_uuid", ""): s.value for s in scrape.samples.get(GPU_UTIL, ())}
    gpus: list[GpuReport] = []
    for sample in scrape.samples.get(GPU_TOTAL, ()):
        uuid = sample.labels.get("gpu_uuid", "")
        if uuid not in used:
            continue
        utilization = util.get(uuid)
        gpus.append(
            GpuReport(
                index=len(gpus),
                name=uuid or f"gpu{len(gpus)}",
                memory_total_bytes=round(sample.value),
                memory_used_bytes=round(used[uuid]),
                utilization_pct=None if utilization is None else utilization * 100.0,
            )
        )
    return tuple(gpus)


@dataclass(frozen=True, slots=True)
class TritonStats:
    """Queue, running, KV and GPU readings of one scrape of the metrics port."""

    pending: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None
    gpus: tuple[GpuReport, ...] = ()

    @classmethod
    def from_scrape(cls, text: str) -> TritonStats:
        scrape = parse_gauges(text, _GAUGES)
        pending = scrape.total(PENDING)  # summed over every model and version
        active = scrape.where(TRT_REQUESTS, "request_type", "active")
        used = scrape.where(TRT_KV_BLOCKS, "kv_cache_block_type", "used")
        blocks = scrape.where(TRT_KV_BLOCKS, "kv_cache_block_type", "max")
        kv = None
        if used and blocks and sum(blocks) > 0:
            kv = min(1.0, max(0.0, sum(used) / sum(blocks)))
        return cls(
            pending=None if pending is None else round(pending),
            running=round(sum(active)) if active else None,
            kv_cache_usage=kv,
            gpus=gpus_from_scrape(scrape),
        )


def models_from_index(index: Any, max_parallel: int | None) -> tuple[ModelReport, ...]:
    """One report per model name; loaded when any of its versions is READY."""
    if not isinstance(index, list):
        return ()
    loaded: dict[str, bool] = {}
    for entry in index:
        if not isinstance(entry, dict):
            continue
        name = str_field(entry, "name")
        if name is not None:
            loaded[name] = loaded.get(name, False) or entry.get("state") == "READY"
    return tuple(
        ModelReport(id=name, loaded=is_loaded, max_parallel=max_parallel)
        for name, is_loaded in loaded.items()
    )


class TritonBackend(Backend):
    """Triton's KServe v2 HTTP endpoint with its metrics port beside it."""

    KIND = "triton"
    SLOTS_PER_MODEL = True
    health_path = "/v2/health/ready"

    @property
    def metrics_url(self) -> str:
        return self._metrics_url or default_metrics_url(self.base_url)

    def judge(self, status: int, body: bytes) -> Health:
        """200 ready; 400 up but not ready (a model is not); 503 exiting; else degraded."""
        if 200 <= status < 300:
            return "ok"
        return "unhealthy" if status == 503 else "degraded"

    async def collect(self) -> BackendFacts:
        index_text, metrics_text, server = await asyncio.gather(
            self.fetch("POST", "/v2/repository/index"),
            self.get_text(self.metrics_url),
            self.get_json("/v2"),
        )
        stats = TritonStats() if metrics_text is None else TritonStats.from_scrape(metrics_text)
        return BackendFacts(
            models=models_from_index(decode_json(index_text), self.max_parallel),
            version=None if server is None else str_field(server, "version"),
            queue_waiting=stats.pending,
            queue_running=stats.running,
            kv_cache_usage=stats.kv_cache_usage,
            gpus=stats.gpus,
        )
