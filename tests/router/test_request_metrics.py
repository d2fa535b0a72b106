"""Per-request series kept as plain numbers, exported in the Prometheus text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.request_metrics import CounterSeries, GaugeSeries, HistogramSeries, RequestSeries


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_with_le_bounds() -> None:
    """A value equal to a bound counts in that bucket (le); +Inf, count and sum cover all."""
    hist = HistogramSeries("t_seconds", "test", ("group",), (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(("g",), value)
    registry = CollectorRegistry()
    registry.register(RequestSeries(hist))
    got = samples(registry)
    bucket = "t_seconds_bucket"
    assert got[(bucket, (("group", "g"), ("le", "0.1")))] == 2
    assert got[(bucket, (("group", "g"), ("le", "1.0")))] == 4
    assert got[(bucket, (("group", "g"), ("le", "+Inf")))] == 5
    assert got[("t_seconds_count", (("group", "g"),))] == 5
    assert abs(got[("t_seconds_sum", (("group", "g"),))] - 8.65) < 1e-9


def test_counters_and_gauges_add_up_per_label_set() -> None:
    counter = CounterSeries("t_requests", "test", ("node", "status"))
    gauge = GaugeSeries("t_in_progress", "test", ("group",))
    counter.inc(("a", "200"))
    counter.inc(("a", "200"), 2)
    counter.inc(("b", "503"))
    gauge.add(("g",), 1)
    gauge.add(("g",), 1)
    gauge.add(("g",), -1)
    registry = CollectorRegistry()
    registry.register(RequestSeries(counter, gauge))
    got = samples(registry)
    assert got[("t_requests_total", (("node", "a"), ("status", "200")))] == 3
    assert got[("t_requests_total", (("node", "b"), ("status", "503")))] == 1
    assert got[("t_in_progress", (("group", "g"),))] == 1
