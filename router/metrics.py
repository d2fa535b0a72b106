"""The router's Prometheus metrics, on a registry passed in (never the global one).

Request metrics are observed once per request from its :class:`RequestRecord`. Node and GPU
gauges are not kept up to date on the hot path: :class:`~router.fleet_metrics.FleetMetrics`
reads them from the :class:`Registry` when Prometheus scrapes. Label values are bounded:
models are those nodes report (unknown ones are ``other``), and both models and tenants are
capped (past the cap, new ones are ``other``). A node's series go when the node is removed,
a group's when the group is.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from router.bounded import LabelCap
from router.fleet_metrics import FleetMetrics, escape
from router.records import RequestRecord
from router.request_metrics import CounterSeries, GaugeSeries, HistogramSeries, RequestSeries

# LLM latencies run from milliseconds (a cached answer) to minutes (a long generation).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
MAX_TENANTS = 100
MAX_MODELS = 500


class RouterMetrics:
    """Every series the router exports, observed from request records and rare events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._define_request_series()
        registry.register(
            RequestSeries(
                self.requests,
                self.duration,
                self.ttft,
                self.tpot,
                self.output_tokens,
                self.overhead,
                self.tenant_requests,
                self.tenant_tokens,
                self.admission_wait,
                self.in_progress,
            )
        )
        self._define_event_counters(registry)
        self._tenants = LabelCap(MAX_TENANTS)
        self._models = LabelCap(MAX_MODELS)
        self._series = (
            self.requests, self.duration, self.ttft, self.tpot, self.output_tokens,
            self.overhead, self.admission_wait,
        )  # fmt: skip
        self._by_node = (self.busy_answers, self.cut_streams, self.resumed_streams)

    def _define_request_series(self) -> None:
        """The series every request touches: plain numbers, exported at scrape time."""
        self.requests = CounterSeries(
            "router_requests",
            "Requests answered, by group, model, serving node and HTTP status.",
            ("group", "model", "node", "status"),
        )
        self.duration = HistogramSeries(
            "router_request_duration_seconds",
            "Time from request arrival to the end of the answer.",
            ("group", "model"),
            LATENCY_BUCKETS,
        )
        self.ttft = HistogramSeries(
            "router_ttft_seconds",
            "Time from request arrival (admission wait included) to the first token.",
            ("group", "model"),
            LATENCY_BUCKETS,
        )
        self.tpot = HistogramSeries(
            "router_tpot_seconds",
            "Time per output token after the first.",
            ("group", "model"),
            TPOT_BUCKETS,
        )
        self.output_tokens = CounterSeries(
            "router_output_tokens",
            "Output tokens relayed.",
            ("group", "model", "node"),
        )
        self.overhead = HistogramSeries(
            "router_overhead_seconds",
            "Time the router added before the client got headers (upstream wait excluded).",
            ("group",),
            OVERHEAD_BUCKETS,
        )
        self.tenant_requests = CounterSeries(
            "router_tenant_requests",
            "Requests per tenant (at most 100 tenants named; the rest are 'other').",
            ("tenant",),
        )
        self.tenant_tokens = CounterSeries(
            "router_tenant_output_tokens",
            "Output tokens per tenant (capped as router_tenant_requests_total).",
            ("tenant",),
        )
        self.admission_wait = HistogramSeries(
            "router_admission_wait_seconds",
            "Time an admitted request waited in the router's queue for a free slot.",
            ("group",),
            LATENCY_BUCKETS,
        )
        self.in_progress = GaugeSeries(
            "router_requests_in_progress",
            "Requests being handled now.",
            ("group",),
        )

    def _define_event_counters(self, registry: CollectorRegistry) -> None:
        """Rare events (a retry, a cut stream, a refusal) stay plain prometheus-client
        counters."""
        self.retries = Counter(
            "router_retries_total",
            "Attempts that failed before the first token and moved to another node, by reason.",
            ["group", "node", "reason"],
            registry=registry,
        )
        self.task_restarts = Counter(
            "router_task_restarts",
            "Restarts of a long-lived loop (the health monitor) after it failed.",
            ["task"],
            registry=registry,
        )
        self.busy_answers = Counter(
            "router_busy_answers_total",
            "Slot checks a node's agent answered busy (router replicas): picked again.",
            ["group", "node"],
            registry=registry,
        )
        self.cut_streams = Counter(
            "router_streams_cut_total",
            "Streams cut after the first token that no node went on with (the client got an "
            "error event).",
            ["group", "node"],
            registry=registry,
        )
        self.resumed_streams = Counter(
            "router_streams_resumed_total",
            "Streams cut after the first token that another node went on with, by the cut node.",
            ["group", "node"],
            registry=registry,
        )
        self.rejections = Counter(
            "router_rejections_total",
            "Requests answered with an error by the router itself, by reason.",
            ["group", "reason"],
            registry=registry,
        )
        self.prompt_chars_total = Counter(
            "router_prompt_chars_total",
            "Prompt characters routed to a node, by whether the node likely held them in its "
            "prompt cache (the router's estimate when it chose the node).",
            ["group", "node", "cached"],
            registry=registry,
        )

    def tenant_label(self, tenant: str | None) -> str:
        return self._tenants(tenant) if tenant else "none"

    def forget_node(self, group: str, node: str) -> None:
        """Drop the series of a node that was removed."""
        match = {"group": group, "node": node}
        for series in self._series:
            series.forget(match)
        for counter in self._by_node:
            counter.remove(group, node)
        _remove_matching(self.retries, match)
        _remove_matching(self.prompt_chars_total, match)

    def forget_group(self, group: str) -> None:
        """Drop the series of a group that was removed (its nodes' went with them). A count of
        requests in progress stays until it is back to 0 (they still count it down)."""
        match = {"group": group}
        for series in self._series:
            series.forget(match)
        if not self.in_progress.series.get((group,)):
            self.in_progress.forget(match)
        for counter in (*self._by_node, self.retries, self.rejections, self.prompt_chars_total):
            _remove_matching(counter, match)

    def prompt_chars(self, group: str, node: str, cached: int, uncached: int) -> None:
        """A prompt went to ``node``: ``cached`` of its characters likely in its cache."""
        if cached:
            self.prompt_chars_total.labels(group, node, "true").inc(cached)
        if uncached:
            self.prompt_chars_total.labels(group, node, "false").inc(uncached)

    def observe(self, record: RequestRecord) -> None:
        group, model = record.group, self._models(record.model)
        by_model = (group, model)
        node = record.node or "none"
        self.requests.inc((group, model, node, str(record.status)))
        if record.t_end is not None:
            self.duration.observe(by_model, record.t_end - record.t_start)
        ttft = record.ttft_s
        if ttft is not None and record.status < 400:
            self.ttft.observe(by_model, ttft)
        tpot = record.tpot_s
        if tpot is not None:
            self.tpot.observe(by_model, tpot)
        tokens = record.output_tokens
        if tokens:
            self.output_tokens.inc((group, model, node), tokens)
        overhead = record.overhead_s
        if overhead is not None:
            self.overhead.observe((group,), overhead)
        if record.admitted:
            self.admission_wait.observe((group,), record.queue_wait_s)
        tenant = (self.tenant_label(record.tenant),)
        self.tenant_requests.inc(tenant)
        if tokens:
            self.tenant_tokens.inc(tenant, tokens)


def _remove_matching(counter: Counter, match: dict[str, str]) -> None:
    """Remove each labelled child of ``counter`` whose labels include ``match`` (a sample's
    labels are the counter's, in its order)."""
    found = {
        tuple(sample.labels.values())
        for family in counter.collect()
        for sample in family.samples
        if all(sample.labels.get(k) == v for k, v in match.items())
    }
    for values in found:
        counter.remove(*values)


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
