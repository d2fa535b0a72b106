"""``python -m bench ci``: the performance regression gate.

One attempt = a short scenario on the demo cluster (calibration, decode floors, zero errors,
node shares) + the paired overhead benchmark + the micro-benchmarks hook. Every threshold is a
ratio against a reference measured **in the same attempt** (stored baselines across machines
are noise). A failed attempt is rerun once; the gate fails only when the rerun fails too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Threshold:
    """A bound on one named ratio: ``min`` (at least) or ``max`` (at most)."""

    ratio: str
    min: float | None = None
    max: float | None = None
    why: str = ""

    def check(self, ratios: dict[str, float]) -> GateCheck:
        value = ratios.get(self.ratio)
        if value is None:
            return GateCheck(self.ratio, False, f"{self.ratio}: not measured")
        ok = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        bound = f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"
        return GateCheck(self.ratio, ok, f"{value:.3f} (must be {bound})")


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateSpec:
    thresholds: tuple[Threshold, ...]
    reruns: int = 1

    @classmethod
    def from_toml(cls, path: Path) -> GateSpec:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")).get("gate", {})
        thresholds = tuple(
            Threshold(
                ratio=name,
                min=bound.get("min"),
                max=bound.get("max"),
                why=str(bound.get("why", "")),
            )
            for name, bound in data.get("ratios", {}).items()
        )
        for t in thresholds:
            if (t.min is None) == (t.max is None):
                raise ValueError(f"[gate.ratios] {t.ratio!r}: give exactly one of min / max")
        return cls(thresholds=thresholds, reruns=int(data.get("reruns", 1)))


@dataclass(slots=True)
class Attempt:
    """One pass of the gate: every check with its result, and where its reports are."""

    checks: list[GateCheck]
    ratios: dict[str, float] = field(default_factory=dict)
    folder: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(slots=True)
class GateResult:
    attempts: list[Attempt]

    @property
    def passed(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.passed,
            "attempts": [{**asdict(a), "pass": a.passed} for a in self.attempts],
        }


async def run_gate(attempt: Callable[[int], Awaitable[Attempt]], reruns: int = 1) -> GateResult:
    """Run ``attempt``; while it fails and reruns are left, run it again."""
    result = GateResult(attempts=[])
    for number in range(1 + max(0, reruns)):
        got = await attempt(number + 1)
        result.attempts.append(got)
        if got.passed:
            break
    return result


def gate_markdown(result: GateResult) -> str:
    lines = [f"# Performance gate: {'PASS' if result.passed else 'FAIL'}", ""]
    for i, a in enumerate(result.attempts, 1):
        lines += [
            f"## Attempt {i}: {'PASS' if a.passed else 'FAIL'} ({a.folder})",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        lines += [f"| {c.name} | {'PASS' if c.passed else 'FAIL'} | {c.detail} |" for c in a.checks]
        lines.append("")
    return "\n".join(lines)
