"""vLLM's Prometheus series, read from the engine at scrape time (backends.md §3.3)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .engine import Engine

FINISHED_REASONS = ("stop", "length", "abort")
LABELS = ["model_name", "engine"]


class VllmCollector:
    """Exports the engine's counters under vLLM's names, labelled ``model_name`` and
    ``engine`` (always ``"0"``: one engine core per emulated server)."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._labels = [model_name, "0"]

    def collect(self) -> Iterable[Metric]:
        engine, labels = self._engine, self._labels
        state = next(iter(engine.models.values()))
        gauges = (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                state.gate.busy,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                state.waiting,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                engine.kv_usage(state),
            ),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=LABELS)
            gauge.add_metric(labels, value)
            yield gauge
        counters = (
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", 0),
            (
                "vllm:prompt_tokens",
                "Number of prefill tokens processed.",
                engine.prompt_tokens_total,
            ),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                engine.generation_tokens_total,
            ),
        )
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=LABELS)
            counter.add_metric(labels, value)
            yield counter
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*LABELS, "finished_reason"],
        )
        for reason in FINISHED_REASONS:
            success.add_metric([*labels, reason], engine.finished[reason])
        yield success


def vllm_registry(engine: Engine, model_name: str) -> CollectorRegistry:
    """A registry of its own for one app (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VllmCollector(engine, model_name))
    return registry
