"""From raw overhead measurements to figures: latency per path and added over direct (paired
by round), throughput per path and ratios (median of per-round ratios), and the targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.metrics import Dist

LATENCY_KEYS = ("ttfb", "ttft", "e2e")
# (path, reference) pairs reported as throughput ratios; missing paths are skipped.
RATIO_PAIRS = (
    ("router", "direct"),
    ("router", "bare proxy"),
    ("router", "nginx"),
    ("router+agent", "direct"),
    ("router+agent", "router"),
    ("router 16 nodes", "bare proxy"),
    ("router 16 nodes", "nginx"),
    ("router 16 nodes", "router"),
    ("bare proxy", "direct"),
    ("nginx", "direct"),
    # Another revision's router in the same run (``--baseline``).
    ("router", "baseline"),
    ("router 16 nodes", "baseline 16 nodes"),
    ("baseline", "bare proxy"),
    ("baseline 16 nodes", "bare proxy"),
    ("baseline", "nginx"),
    ("baseline 16 nodes", "nginx"),
)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One overhead target: what was measured against what is asked."""

    name: str
    measured: float | None
    limit: float
    kind: str  # "max" or "min"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit


@dataclass(frozen=True, slots=True)
class OverheadResult:
    generator: str
    latency_ms: dict[str, dict[str, Dist]]  # path -> ttfb/ttft/e2e
    added_ms: dict[str, dict[str, dict[str, float]]]  # path -> key -> p50/p99 (vs direct)
    router_header_ms: Dist
    latency_errors: dict[str, int]
    throughput_rps: dict[str, dict[str, list[float]]]  # phase -> path -> per round
    ratios: dict[str, float]  # "phase a/b" -> median of per-round ratios
    generator_cpu_percent: dict[str, float]
    targets: list[TargetCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median_rps(self, phase: str, path: str) -> float | None:
        values = self.throughput_rps.get(phase, {}).get(path)
        return float(np.median(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_rps"] = {
            phase: {path: self.median_rps(phase, path) for path in paths}
            for phase, paths in self.throughput_rps.items()
        }
        out["targets"] = [{**asdict(t), "met": t.met} for t in self.targets]
        return out


def latency_figures(
    raw: dict[str, list[dict[str, Any]]],
) -> tuple[
    dict[str, dict[str, Dist]], dict[str, dict[str, dict[str, float]]], Dist, dict[str, int]
]:
    """Per-path distributions, added latency paired by round, the router's own header."""
    per_path = {
        path: {k: Dist.of((r[k] for r in rows if r["ok"]), 1000) for k in LATENCY_KEYS}
        for path, rows in raw.items()
    }
    errors = {path: sum(not r["ok"] for r in rows) for path, rows in raw.items()}
    added: dict[str, dict[str, dict[str, float]]] = {}
    direct = raw.get("direct", [])
    for path, rows in raw.items():
        if path == "direct":
            continue
        added[path] = {}
        for k in LATENCY_KEYS:
            diffs = [
                (r[k] - d[k]) * 1000
                for r, d in zip(rows, direct, strict=False)
                if r["ok"] and d["ok"]
            ]
            if diffs:
                p50, p99 = np.percentile(diffs, [50, 99])
                added[path][k] = {"p50": float(p50), "p99": float(p99)}
    header = Dist.of(
        r["overhead_ms"] for r in raw.get("router", []) if r["ok"] and r["overhead_ms"] is not None
    )
    return per_path, added, header, errors


def throughput_ratios(rounds: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """``"phase a/b"``: the median over rounds of a's throughput over b's in the same round."""
    out: dict[str, float] = {}
    for phase, paths in rounds.items():
        for a, b in RATIO_PAIRS:
            if a in paths and b in paths:
                pairs = [x / y for x, y in zip(paths[a], paths[b], strict=False) if y > 0]
                if pairs:
                    out[f"{phase} {a}/{b}"] = float(np.median(pairs))
    return out


def overhead_targets(result: OverheadResult) -> list[TargetCheck]:
    """The overhead targets (ratios from one run, fast emulated node), with one node and with
    the same node behind a 16-node group."""
    ttfb = result.added_ms.get("router", {}).get("ttfb", {}).get("p50")
    nginx = result.ratios.get("stream16 router/nginx")
    fleet_nginx = result.ratios.get("stream16 router 16 nodes/nginx")
    return [
        TargetCheck("added p50 TTFB, router (static node), concurrency 1 [ms]", ttfb, 1.0, "max"),
        TargetCheck(
            "short non-streamed, 32 connections: router / bare proxy",
            result.ratios.get("short router/bare proxy"),
            0.9,
            "min",
        ),
        TargetCheck(
            "16-chunk streams, 32 connections: router / nginx",
            nginx,
            0.9,
            "min",
            "" if nginx is not None else "nginx not installed",
        ),
        TargetCheck(
            "short non-streamed, 32 connections: router with 16 nodes / bare proxy",
            result.ratios.get("short router 16 nodes/bare proxy"),
            0.9,
            "min",
        ),
        TargetCheck(
            "16-chunk streams, 32 connections: router with 16 nodes / nginx",
            fleet_nginx,
            0.85,
            "min",
            "" if fleet_nginx is not None else "nginx not installed",
        ),
    ]


def latency_ratios(per_path: dict[str, dict[str, Dist]]) -> dict[str, float]:
    """``"latency ttfb_p50 a/b"``: p50 latency through a over p50 through b (same run)."""
    out: dict[str, float] = {}
    for key in ("ttfb", "e2e"):
        for a, b in RATIO_PAIRS:
            if a in per_path and b in per_path:
                x, y = per_path[a][key].p50, per_path[b][key].p50
                if x is not None and y:
                    out[f"latency {key}_p50 {a}/{b}"] = x / y
    return out
