"""Read a few gauges out of a backend's Prometheus text scrape, cheaply.

Backend scrapes are large (vLLM and TGI export histograms per model, Triton per model and GPU),
and the agent scrapes on the same event loop that relays streams. So only the lines of the
wanted families (their samples and their ``# HELP`` / ``# TYPE`` lines) are cut out with one
regular expression and handed to ``prometheus_client.parser``; everything else is never parsed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("node_agent.backends.prometheus_text")


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a wanted family: its labels and value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Scrape:
    """The samples of the wanted families, by family name, in scrape order."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def values(self, name: str) -> list[float] | None:
        """Every value of a family, or None when the scrape does not have it at all."""
        found = self.samples.get(name)
        return None if found is None else [s.value for s in found]

    def total(self, name: str) -> float | None:
        """The sum over every label set (e.g. over models or engines), None when absent."""
        found = self.values(name)
        return None if found is None else sum(found)

    def where(self, name: str, label: str, value: str) -> list[float]:
        """The values of a family whose ``label`` equals ``value``."""
        return [s.value for s in self.samples.get(name, ()) if s.labels.get(label) == value]


@lru_cache(maxsize=16)
def _line_filter(names: tuple[str, ...]) -> re.Pattern[str]:
    # A sample, HELP or TYPE line of exactly one of the names (not of a longer name sharing
    # the prefix, and not a histogram's _bucket/_sum/_count lines).
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(r"^(?:# (?:HELP|TYPE) )?(?:" + alternatives + r")[{ ].*$", re.MULTILINE)


def parse_gauges(text: str, names: Iterable[str]) -> Scrape:
    """The samples of ``names`` in a Prometheus text scrape; a malformed scrape gives none."""
    wanted_names = tuple(sorted(set(names)))
    wanted = "\n".join(m.group(0) for m in _line_filter(wanted_names).finditer(text))
    samples: dict[str, list[Sample]] = {}
    try:
        for family in text_string_to_metric_families(wanted):
            for sample in family.samples:
                if sample.name in wanted_names:
                    samples.setdefault(sample.name, []).append(
                        Sample(dict(sample.labels), float(sample.value))
                    )
    except ValueError as exc:
        log.warning("cannot parse the backend's Prometheus text: %s", exc)
        return Scrape()
    return Scrape(samples)
