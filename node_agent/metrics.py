"""The agent's Prometheus metrics at ``GET /metrics``, on a registry made per app.

Two parts. :class:`RequestMetrics` is what the proxy touches per request: a counter by route and
status and two histograms (duration, time to first byte), observed once when a request ends.
Everything else is read when Prometheus scrapes, by :class:`AgentCollector`, from state the agent
keeps anyway (the traffic counters, the latest load report, the router links), so the proxy's
hot path never updates a gauge. Labels are bounded: ``path`` is the route template (e.g.
``/v2/models/{model}/infer``), never the raw path; models are those the backend reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from node_protocol.wire import HEALTH_VALUES, LoadReport

from .prompt_caches import PromptCaches
from .traffic import TrafficStats

if TYPE_CHECKING:
    from .reporter import Reporter

# LLM latencies run from milliseconds (an error, a cached answer) to minutes (a long generation).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
CLIENT_GONE = 499  # the status label of a request whose client left before the answer ended


class RequestMetrics:
    """Per-request metrics, observed once per proxied request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "node_agent_requests_total",
            "Requests the agent proxied, by route and HTTP status (499: the client left).",
            ["path", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "node_agent_request_duration_seconds",
            "Time from the request's arrival to the end of the answer.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "node_agent_time_to_first_byte_seconds",
            "Time from the request's arrival to the first body bytes from the backend.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(
        self, path: str, status: int, duration_s: float, first_byte_s: float | None
    ) -> None:
        self.requests.labels(path, str(status)).inc()
        self.duration.labels(path).observe(duration_s)
        if first_byte_s is not None:
            self.first_byte.labels(path).observe(first_byte_s)


class AgentCollector(Collector):
    """Gauges read at scrape time from the traffic counters and the latest load report."""

    def __init__(
        self,
        stats: TrafficStats,
        reporter: Callable[[], Reporter | None],
        prompts: PromptCaches | None = None,
    ) -> None:
        self._stats = stats
        self._reporter = reporter
        self._prompts = prompts

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        in_flight = GaugeMetricFamily(
            "node_agent_requests_in_flight", "Requests the agent has in flight to its backend."
        )
        in_flight.add_metric([], stats.in_flight)
        tokens = CounterMetricFamily(
            "node_agent_output_tokens", "Output tokens relayed (exact where the backend says)."
        )
        tokens.add_metric([], stats.output_tokens)
        yield in_flight
        yield tokens
        if self._prompts is not None:
            yield from _prompt_metrics(self._prompts)
        reporter = self._reporter()
        if reporter is None:
            return
        failures = CounterMetricFamily(
            "node_agent_report_send_failures",
            "Registration or report calls to a router that failed.",
            labels=["router"],
        )
        for link in reporter.links:
            failures.add_metric([link.router_url], link.failures)
        yield failures
        report = reporter.latest
        if report is not None:
            yield from _report_metrics(report)


def _report_metrics(report: LoadReport) -> Iterator[Metric]:
    health = GaugeMetricFamily(
        "node_agent_backend_health",
        "1 for the backend's current health (ok, degraded, unhealthy), else 0.",
        labels=["kind", "state"],
    )
    for state in HEALTH_VALUES:
        health.add_metric([report.backend_kind, state], float(report.backend_health == state))
    yield health
    for name, help_text, value in (
        ("node_agent_backend_queue_waiting", "Requests waiting (backend).", report.queue_waiting),
        ("node_agent_backend_queue_running", "Requests running (backend).", report.queue_running),
        ("node_agent_backend_kv_cache_usage", "KV-cache usage, 0-1.", report.kv_cache_usage),
    ):
        if value is not None:
            yield GaugeMetricFamily(name, help_text, value=value)
    labels = ["gpu", "gpu_name"]
    total = GaugeMetricFamily("node_agent_gpu_memory_total_bytes", "GPU memory.", labels=labels)
    used = GaugeMetricFamily("node_agent_gpu_memory_used_bytes", "GPU memory used.", labels=labels)
    for gpu in report.gpus:
        total.add_metric([str(gpu.index), gpu.name], gpu.memory_total_bytes)
        used.add_metric([str(gpu.index), gpu.name], gpu.memory_used_bytes)
    yield total
    yield used
    loaded = GaugeMetricFamily(
        "node_agent_model_loaded", "1 if the model is loaded, else 0.", labels=["model"]
    )
    for model in report.models:
        loaded.add_metric([model.id], 1.0 if model.loaded else 0.0)
    yield loaded
    yield GaugeMetricFamily(
        "node_agent_models_loaded",
        "Models the backend has loaded.",
        value=sum(1 for m in report.models if m.loaded),
    )


def _prompt_metrics(prompts: PromptCaches) -> Iterator[Metric]:
    """Per model: prompt characters in, the share estimated to land on a cached prefix, the
    engine's own prompt and cached token counts where it reports them, and the index's size."""
    labels = ["model"]
    families: tuple[CounterMetricFamily | GaugeMetricFamily, ...] = (
        CounterMetricFamily(
            "node_agent_prompt_chars",
            "Characters of the prompts the backend took.",
            labels=labels,
        ),
        CounterMetricFamily(
            "node_agent_prompt_cached_chars_estimated",
            "Of those, characters that arrived on a prefix the agent's index held (estimate).",
            labels=labels,
        ),
        CounterMetricFamily(
            "node_agent_engine_prompt_tokens",
            "Prompt tokens of the answers in which the engine said how many it had cached.",
            labels=labels,
        ),
        CounterMetricFamily(
            "node_agent_engine_cached_prompt_tokens",
            "Of those, the prompt tokens the engine said it took from its prompt cache.",
            labels=labels,
        ),
        GaugeMetricFamily(
            "node_agent_prefix_index_chars",
            "Characters of prompt prefixes the agent's index holds for the model.",
            labels=labels,
        ),
        GaugeMetricFamily(
            "node_agent_prefix_index_capacity_chars",
            "The index's capacity: the engine's cache as estimated and corrected.",
            labels=labels,
        ),
    )
    for model, cache in prompts.models().items():
        values = (
            cache.prompt_chars,
            cache.cached_chars,
            cache.engine_prompt_tokens,
            cache.engine_cached_tokens,
            cache.index.used_chars,
            cache.index.capacity_chars,
        )
        for family, value in zip(families, values, strict=True):
            family.add_metric([model], value)
    yield from families


class AgentMetrics:
    """The app's registry with the request metrics and the scrape-time collector on it."""

    def __init__(
        self,
        stats: TrafficStats,
        reporter: Callable[[], Reporter | None],
        prompts: PromptCaches | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(self.registry)
        self.task_restarts = Counter(
            "node_agent_task_restarts",
            "Restarts of a long-lived loop (reports, a router link, router DNS) after a failure.",
            ["task"],
            registry=self.registry,
        )
        self.registry.register(AgentCollector(stats, reporter, prompts))

    def render(self) -> web.Response:
        """The ``GET /metrics`` answer in the Prometheus text format."""
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
