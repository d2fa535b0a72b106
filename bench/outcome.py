"""The outcome of one ``bench run``: every figure and check, as the reports present it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.calibration import CalibrationResult
from bench.loadrun import CPU_LIMIT_PERCENT, LocustResult
from bench.metrics import Dist, RunStats, group_stats
from bench.overhead.analysis import OverheadResult
from bench.records import ClientRecord
from bench.scenario import Scenario
from bench.targets import ModelVerdict

DEFINITIONS = {
    "TTFB": "t_headers - t_send",
    "TTFT": "t_first_token - t_send (first non-empty content / reasoning_content)",
    "E2E": "t_last_token - t_send (last chunk carrying a token)",
    "TPOT": "(E2E - TTFT) / (N - 1), N >= 2 completion tokens (from usage)",
    "decode rate": "1 / TPOT per stream; checked as p50 against the class min_tok_s",
    "ITL": "gaps between token chunks",
    "output tokens/s": "tokens whose chunk times fall in the steady window / window length",
    "goodput": "requests sent in the window meeting every SLO / window length",
    "window": "requests sent from warmup_s after the first request to duration_s after it",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(slots=True)
class RunOutcome:
    scenario: Scenario
    target: str
    cluster: str | None
    started: str
    stats: RunStats
    verdicts: list[ModelVerdict]
    records: list[ClientRecord]
    locust: LocustResult
    workers: int = 0
    calibration: CalibrationResult | None = None
    overhead: OverheadResult | None = None
    share: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> node -> share
    notes: list[str] = field(default_factory=list)

    def checks(self) -> list[Check]:
        out = [Check(f"decode rate {v.model}", v.passed, v.reason) for v in self.verdicts]
        overall = self.stats.overall
        errors = sum(overall.errors.values())
        allowed = self.scenario.checks.max_error_rate * max(1, overall.requests)
        out.append(
            Check(
                "errors",
                errors <= allowed and overall.requests > 0,
                f"{errors} of {overall.requests} requests",
            )
        )
        if self.calibration is not None:
            out.append(
                Check("calibration", self.calibration.ok, _calibration_detail(self.calibration))
            )
        floor = self.scenario.checks.min_node_share
        for model, shares in self.share.items():
            if floor > 0 and len(shares) > 1:
                low = min(shares.values())
                out.append(
                    Check(
                        f"node share {model}",
                        low >= floor,
                        f"lowest {low:.0%}, floor {floor:.0%}: "
                        + ", ".join(f"{n} {s:.0%}" for n, s in shares.items()),
                    )
                )
        cpu = max(self.locust.cpu_percent, default=0.0)
        out.append(
            Check(
                "load generator CPU",
                self.locust.cpu_ok,
                f"busiest Locust process {cpu:.0f}% (limit {CPU_LIMIT_PERCENT:.0f}%)",
            )
        )
        return out

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks())

    def _stats(self, model: str) -> dict[str, Any]:
        stats = self.stats.models.get(model)
        if stats is None:
            stats = group_stats([], self.stats.window, self.scenario.slo)
        return stats.to_dict()

    def to_dict(self) -> dict[str, Any]:
        overall = self.stats.overall
        errors = sum(overall.errors.values())
        header = Dist.of(
            r.router_overhead_ms for r in self.records if r.router_overhead_ms is not None
        )
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "target": self.target,
            "cluster": self.cluster,
            "started": self.started,
            "load": asdict(self.scenario.load),
            "window": {
                "start": self.stats.window.start,
                "end": self.stats.window.end,
                "length_s": self.stats.window.length,
            },
            "pass": self.passed,
            "checks": [asdict(c) for c in self.checks()],
            "models": {
                v.model: {**v.to_dict(), "stats": self._stats(v.model)} for v in self.verdicts
            },
            "overall": overall.to_dict(),
            "errors": {
                "count": errors,
                "rate": errors / max(1, overall.requests),
                "classes": overall.errors,
            },
            "calibration_ok": None if self.calibration is None else self.calibration.ok,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "overhead": {
                "router_header_ms": asdict(header),
                "paired": None if self.overhead is None else self.overhead.to_dict(),
            },
            "node_share": self.share,
            "generator": {
                "workers": self.workers,
                "cpu_percent": list(self.locust.cpu_percent),
                "cpu_ok": self.locust.cpu_ok,
            },
            "definitions": DEFINITIONS,
            "notes": self.notes,
        }


def _calibration_detail(cal: CalibrationResult) -> str:
    parts = []
    for p in cal.paths:
        ttft = "n/a" if p.ttft_error is None else f"{p.ttft_error:+.1%}"
        dec = "n/a" if p.decode_error is None else f"{p.decode_error:+.1%}"
        parts.append(f"{p.path}: TTFT {ttft}, decode {dec}")
    verdict = "" if cal.ok else " -> the load generator was the bottleneck; figures are suspect"
    return f"within ±{cal.tolerance:.0%}? " + "; ".join(parts) + verdict
