"""Prometheus text written by hand, for exporters that name series as registered.

prometheus_client appends ``_total`` to every counter; TGI's metrics-rs exporter and Triton's
prometheus-cpp do not (``tgi_request_count``, ``nv_inference_count``), so their faces write
the text here. metrics-rs puts a blank line after each family; prometheus-cpp does not, and
writes HELP/TYPE even for a family without samples.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Labels = Mapping[str, str]


@dataclass(slots=True)
class Family:
    """One metric family: its samples are ``(suffix, labels, value)``."""

    name: str
    kind: str
    help: str | None = None
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> Family:
        self.samples.append((suffix, labels or {}, value))
        return self


class Histogram:
    """Cumulative buckets, a sum and a count, rendered as ``_bucket``/``_sum``/``_count``."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def family(self, name: str, help_text: str | None) -> Family:
        fam = Family(name, "histogram", help_text)
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            fam.add(running, {"le": number(bound)}, "_bucket")
        fam.add(self.count, {"le": "+Inf"}, "_bucket")
        fam.add(self.total, suffix="_sum")
        return fam.add(self.count, suffix="_count")


def number(value: float) -> str:
    """Whole numbers without a decimal point, others as the shortest exact decimal."""
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else repr(as_float)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    parts = (
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in labels.items()
    )
    return "{" + ",".join(parts) + "}"


def render(families: Iterable[Family], blank_line_after: bool) -> bytes:
    """The text exposition of ``families``, in order."""
    lines: list[str] = []
    for fam in families:
        if fam.help is not None:
            lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        lines.extend(
            f"{fam.name}{suffix}{_labels(labels)} {number(value)}"
            for suffix, labels, value in fam.samples
        )
        if blank_line_after:
            lines.append("")
    return ("\n".join(lines) + "\n").encode()
