"""The router's Prometheus metrics, on a registry passed in (never the global one).

Request metrics are observed once per request from its :class:`RequestRecord`. Node and GPU
gauges are not kept up to date on the hot path: :class:`~router.fleet_metrics.FleetMetrics`
reads them from the :class:`Registry` when Prometheus scrapes. Label values are bounded:
models are those nodes report (unknown ones are ``other``), tenants are capped (the rest are
``other``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from router.fleet_metrics import FleetMetrics, escape
from router.records import RequestRecord

# LLM latencies run from milliseconds (a cached answer) to minutes (a long generation).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
MAX_TENANTS = 100
OTHER = "other"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "router_requests_total",
            "Requests answered, by group, model, serving node and HTTP status.",
            ["group", "model", "node", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "router_request_duration_seconds",
            "Time from request arrival to the end of the answer.",
            ["group", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "router_ttft_seconds",
            "Time from request arrival (admission wait included) to the first token.",
            ["group", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "router_tpot_seconds",
            "Time per output token after the first.",
            ["group", "model"],
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Counter(
            "router_output_tokens_total",
            "Output tokens relayed.",
            ["group", "model", "node"],
            registry=registry,
        )
        self.overhead = Histogram(
            "router_overhead_seconds",
            "Time the router added before the client got headers (upstream wait excluded).",
            ["group"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "router_retries_total",
            "Attempts that failed before the first byte and moved to another node.",
            ["group", "node"],
            registry=registry,
        )
        self.cut_streams = Counter(
            "router_streams_cut_total",
            "Streams cut after the first byte (the client got an error event).",
            ["group", "node"],
            registry=registry,
        )
        self.rejections = Counter(
            "router_rejections_total",
            "Requests answered with an error by the router itself, by reason.",
            ["group", "reason"],
            registry=registry,
        )
        self.tenant_requests = Counter(
            "router_tenant_requests_total",
            "Requests per tenant (at most 100 tenants named; the rest are 'other').",
            ["tenant"],
            registry=registry,
        )
        self.tenant_tokens = Counter(
            "router_tenant_output_tokens_total",
            "Output tokens per tenant (capped as router_tenant_requests_total).",
            ["tenant"],
            registry=registry,
        )
        self.admission_wait = Histogram(
            "router_admission_wait_seconds",
            "Time an admitted request waited in the router's queue for a free slot.",
            ["group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "router_requests_in_progress",
            "Requests being handled now.",
            ["group"],
            registry=registry,
        )
        self._tenants: set[str] = set()
        self._cache: dict[tuple[object, ...], Any] = {}

    def tenant_label(self, tenant: str | None) -> str:
        if not tenant:
            return "none"
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < MAX_TENANTS:
            self._tenants.add(tenant)
            return tenant
        return OTHER

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (``labels()`` is the
        costly part of an observation); the cache is bounded like the label values."""
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            if len(self._cache) > 50_000:
                self._cache.clear()
            child = self._cache[key] = metric.labels(*labels)
        return child

    def in_progress_of(self, group: str) -> Any:
        return self._child(self.in_progress, group)

    def observe(self, record: RequestRecord) -> None:
        group, model = record.group, record.model
        node = record.node or "none"
        self._child(self.requests, group, model, node, str(record.status)).inc()
        if record.t_end is not None:
            self._child(self.duration, group, model).observe(record.t_end - record.t_start)
        ttft = record.ttft_s
        if ttft is not None and record.status < 400:
            self._child(self.ttft, group, model).observe(ttft)
        tpot = record.tpot_s
        if tpot is not None:
            self._child(self.tpot, group, model).observe(tpot)
        tokens = record.output_tokens
        if tokens:
            self._child(self.output_tokens, group, model, node).inc(tokens)
        overhead = record.overhead_s
        if overhead is not None:
            self._child(self.overhead, group).observe(overhead)
        if record.admitted:
            self._child(self.admission_wait, group).observe(record.queue_wait_s)
        tenant = self.tenant_label(record.tenant)
        self._child(self.tenant_requests, tenant).inc()
        if tokens:
            self._child(self.tenant_tokens, tenant).inc(tokens)


METRICS = web.AppKey("metrics", RouterMetrics)


FLEET = web.AppKey("fleet", FleetMetrics)


ADMISSION_QUEUES: web.AppKey[Callable[[], dict[str, int]]] = web.AppKey("admission_queues")


def _queue_text(lengths: dict[str, int]) -> bytes:
    lines = [
        "# HELP router_admission_queue_waiting Requests waiting for a slot, per group and model.\n",
        "# TYPE router_admission_queue_waiting gauge\n",
    ]
    for key, length in sorted(lengths.items()):
        group, _, model = key.partition("/")
        lines.append(
            f'router_admission_queue_waiting{{group="{escape(group)}",model="{escape(model)}"}}'
            f" {length}\n"
        )
    return "".join(lines).encode()


def render_metrics(app: web.Application) -> bytes:
    """The whole ``/metrics`` text: request metrics, the fleet's gauges, the queues."""
    text = generate_latest(app[METRICS].registry) + app[FLEET].render()
    return text + _queue_text(app[ADMISSION_QUEUES]())


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    body = render_metrics(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
