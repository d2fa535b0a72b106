"""Per-request counters and histograms, kept as plain numbers and exported at scrape time.

Every answered request updates about nine series. prometheus-client's ``Counter.inc`` and
``Histogram.observe`` take a lock per call (per bucket, for a histogram), made for threads the
router does not have: on a short request that was a tenth of the routing cost. Here a request
adds to lists and floats (one ``bisect`` for a histogram), on the event loop's one thread, and
:class:`RequestSeries` hands prometheus-client's metric families to the registry when it is
scraped, so the exposition is the library's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


def forget(
    labels: tuple[str, ...], series: dict[tuple[str, ...], Any], match: Mapping[str, str]
) -> None:
    """Drop every series whose labels include ``match`` (a node or a group that is gone)."""
    where = [(labels.index(name), value) for name, value in match.items() if name in labels]
    if len(where) != len(match):
        return  # this metric does not carry every label matched on: nothing of it is gone
    for key in [k for k in series if all(k[i] == v for i, v in where)]:
        del series[key]


@dataclass(slots=True)
class Buckets:
    """One histogram series: a count per bucket (the last is +Inf) and the sum."""

    counts: list[int]
    total: float = 0.0


@dataclass(slots=True)
class HistogramSeries:
    name: str
    doc: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    series: dict[tuple[str, ...], Buckets] = field(default_factory=dict)

    def observe(self, key: tuple[str, ...], value: float) -> None:
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = Buckets([0] * (len(self.bounds) + 1))
        # inline, not a method of Buckets: five of these a request, a call each saved
        found.counts[bisect_left(self.bounds, value)] += 1  # the first bucket with bound >= value
        found.total += value

    def forget(self, match: Mapping[str, str]) -> None:
        forget(self.labels, self.series, match)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # "0.005", "1.0", as Go
        for key, series in self.series.items():
            running, cumulative = 0, []
            for edge, count in zip(edges, series.counts, strict=True):
                running += count
                cumulative.append((edge, float(running)))
            family.add_metric(list(key), cumulative, series.total)
        return family


@dataclass(slots=True)
class CounterSeries:
    """Sums per label set, exported as a counter."""

    name: str  # without the _total suffix
    doc: str
    labels: tuple[str, ...]
    series: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.series[key] = self.series.get(key, 0.0) + amount

    def forget(self, match: Mapping[str, str]) -> None:
        forget(self.labels, self.series, match)

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return self._filled(CounterMetricFamily(self.name, self.doc, labels=self.labels))

    def _filled(
        self, family: CounterMetricFamily | GaugeMetricFamily
    ) -> CounterMetricFamily | GaugeMetricFamily:
        for key, value in self.series.items():
            family.add_metric(list(key), value)
        return family


@dataclass(slots=True)
class GaugeSeries(CounterSeries):
    """The same sums, going up and down, exported as a gauge."""

    def add(self, key: tuple[str, ...], amount: float) -> None:
        self.inc(key, amount)

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return self._filled(GaugeMetricFamily(self.name, self.doc, labels=self.labels))


class RequestSeries(Collector):
    """The series a collector exports; register it on a CollectorRegistry."""

    def __init__(self, *metrics: HistogramSeries | CounterSeries) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily | GaugeMetricFamily]:
        for metric in self._metrics:
            yield metric.family()
