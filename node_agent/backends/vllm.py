"""vLLM: ``/health``, ``/v1/models`` (everything listed is loaded), ``/metrics``, ``/version``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, int_field, list_field, str_field
from .prometheus_text import Sample, parse_gauges

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # deprecated name, vLLM <= 0.11
CACHE_CONFIG = "vllm:cache_config_info"  # labels num_gpu_blocks and block_size: the KV capacity
_GAUGES = (WAITING, RUNNING, KV_USAGE, KV_USAGE_OLD, CACHE_CONFIG)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The queue and cache gauges of one ``/metrics`` scrape (summed / averaged over engines)."""

    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None
    kv_capacity_tokens: int | None = None

    @classmethod
    def from_scrape(cls, text: str) -> EngineStats:
        scrape = parse_gauges(text, _GAUGES)
        kv = scrape.values(KV_USAGE) or scrape.values(KV_USAGE_OLD)
        waiting = scrape.total(WAITING)
        running = scrape.total(RUNNING)
        return cls(
            waiting=None if waiting is None else round(waiting),
            running=None if running is None else round(running),
            kv_cache_usage=None if not kv else min(1.0, max(0.0, sum(kv) / len(kv))),
            kv_capacity_tokens=_kv_capacity(scrape.samples.get(CACHE_CONFIG, ())),
        )


def _kv_capacity(configs: Iterable[Sample]) -> int | None:
    """The tokens every engine's KV cache holds: ``num_gpu_blocks`` x ``block_size`` summed over
    the engines' ``cache_config_info`` (None when absent or not numbers)."""
    total = 0
    for config in configs:
        blocks = config.labels.get("num_gpu_blocks", "")
        size = config.labels.get("block_size", "")
        if not (blocks.isdigit() and size.isdigit()):
            return None
        total += int(blocks) * int(size)
    return total or None


def models_from_cards(
    body: dict[str, Any] | None, max_parallel: int | None
) -> tuple[ModelReport, ...]:
    """One report per base model: cards sharing a ``root`` are aliases of the same weights
    (``--served-model-name a b``); LoRA cards (``parent`` set) are models of their own that
    inherit the base's context length."""
    cards = list_field(body, "data")
    bases: dict[str, list[dict[str, Any]]] = {}
    loras: list[dict[str, Any]] = []
    for card in cards:
        if str_field(card, "id") is None:
            continue
        if str_field(card, "parent"):
            loras.append(card)
        else:
            root = str_field(card, "root") or str(card["id"])
            bases.setdefault(root, []).append(card)
    reports: list[ModelReport] = []
    context_by_name: dict[str, int | None] = {}
    for group in bases.values():
        first = group[0]
        context = int_field(first, "max_model_len")
        for card in group:
            context_by_name[str(card["id"])] = context
        reports.append(
            ModelReport(
                id=str(first["id"]),
                loaded=True,
                aliases=tuple(str(c["id"]) for c in group[1:]),
                max_parallel=max_parallel,
                context_length=context,
            )
        )
    for card in loras:
        reports.append(
            ModelReport(
                id=str(card["id"]),
                loaded=True,
                max_parallel=max_parallel,
                context_length=int_field(card, "max_model_len")
                or context_by_name.get(str(card["parent"])),
            )
        )
    return tuple(reports)


class VllmBackend(Backend):
    """vLLM's OpenAI server: one base model per process, Prometheus gauges on the same port."""

    KIND = "vllm"
    health_path = "/health"
    _version: str | None = None

    async def collect(self) -> BackendFacts:
        models_body, metrics_text, version = await asyncio.gather(
            self.get_json("/v1/models"), self.get_text(self.metrics_url), self._get_version()
        )
        stats = EngineStats() if metrics_text is None else EngineStats.from_scrape(metrics_text)
        return BackendFacts(
            models=models_from_cards(models_body, self.max_parallel),
            version=version,
            queue_waiting=stats.waiting,
            queue_running=stats.running,
            kv_cache_usage=stats.kv_cache_usage,
            kv_capacity_tokens=stats.kv_capacity_tokens,
        )

    async def _get_version(self) -> str | None:
        if self._version is None:
            body = await self.get_json("/version")
            if body is not None:
                self._version = str_field(body, "version")
        return self._version
