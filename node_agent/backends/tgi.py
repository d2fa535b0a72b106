"""HuggingFace TGI: ``/health``, ``/info`` (one model, always loaded) and ``/metrics``.

Facts: ``GET /health`` answers 200 empty when healthy and
``503 {"error":"unhealthy","error_type":"healthcheck"}`` when its health forward failed;
``/info`` carries ``model_id``, ``max_concurrent_requests`` (the cap before 429) and
``max_total_tokens``; ``/metrics`` (metrics-rs, same port) has ``tgi_queue_size``,
``tgi_batch_current_size`` and the batch token budget against the KV capacity. TGI exports no
GPU memory metric.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, Health, positive_int, str_field
from .prometheus_text import parse_gauges

QUEUE = "tgi_queue_size"
BATCH = "tgi_batch_current_size"
BATCH_TOKENS = "tgi_batch_current_max_tokens"
MAX_TOKENS = "tgi_batch_max_total_tokens"
_GAUGES = (QUEUE, BATCH, BATCH_TOKENS, MAX_TOKENS)


@dataclass(frozen=True, slots=True)
class TgiStats:
    """Queue, batch and KV-budget gauges of one TGI scrape."""

    queue: int | None = None
    batch: int | None = None
    kv_cache_usage: float | None = None

    @classmethod
    def from_scrape(cls, text: str) -> TgiStats:
        scrape = parse_gauges(text, _GAUGES)
        queue, batch = scrape.total(QUEUE), scrape.total(BATCH)
        used, capacity = scrape.total(BATCH_TOKENS), scrape.total(MAX_TOKENS)
        kv = None
        if used is not None and capacity:
            kv = min(1.0, max(0.0, used / capacity))
        return cls(
            queue=None if queue is None else round(queue),
            batch=None if batch is None else round(batch),
            kv_cache_usage=kv,
        )


def model_from_info(info: dict[str, Any] | None, max_parallel: int | None) -> ModelReport | None:
    """TGI's one model: parallel slots from ``max_concurrent_requests`` unless configured."""
    if info is None:
        return None
    model_id = str_field(info, "model_id")
    if model_id is None:
        return None
    return ModelReport(
        id=model_id,
        loaded=True,
        max_parallel=max_parallel or positive_int(info.get("max_concurrent_requests")),
        context_length=positive_int(info.get("max_total_tokens")),
    )


class TgiBackend(Backend):
    """TGI's router: one model per process, Prometheus gauges on the same port."""

    KIND = "tgi"
    health_path = "/health"

    def judge(self, status: int, body: bytes) -> Health:
        """503 with ``error_type: healthcheck`` means TGI's own forward check failed."""
        if 200 <= status < 300:
            return "ok"
        if status == 503:
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError:
                answer = None
            if isinstance(answer, dict) and answer.get("error_type") == "healthcheck":
                return "unhealthy"
        return "degraded"

    async def collect(self) -> BackendFacts:
        info, metrics_text = await asyncio.gather(
            self.get_json("/info"), self.get_text(self.metrics_url)
        )
        model = model_from_info(info, self.max_parallel)
        stats = TgiStats() if metrics_text is None else TgiStats.from_scrape(metrics_text)
        return BackendFacts(
            models=() if model is None else (model,),
            version=None if info is None else str_field(info, "version"),
            queue_waiting=stats.queue,
            queue_running=stats.batch,
            kv_cache_usage=stats.kv_cache_usage,
        )
