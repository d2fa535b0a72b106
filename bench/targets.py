"""Per-model targets from a capacity spec, and the verdict of a run against them.

Each class's ``min_tok_s`` is a floor on the per-stream decode rate (p50 of 1/TPOT); a rate
above ``max_tok_s`` is noted, not failed. The aggregate check asks the model's output tokens/s
over the steady window to reach ``min_tok_s`` times the mean number of streams decoding at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.metrics import GroupStats

CAPACITY_FILE = Path(__file__).parent / "capacity.toml"


@dataclass(frozen=True, slots=True)
class Target:
    """The decode band a model's class promises, and how batching slows each stream."""

    capacity_class: str
    min_tok_s: float
    max_tok_s: float
    batch_decay: float


def load_targets(path: Path = CAPACITY_FILE) -> tuple[dict[str, Target], dict[str, str]]:
    """The classes (by name) and the model -> class map of the capacity table."""
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    classes = {
        name: Target(
            name,
            float(row["min_tok_s"]),
            float(row["max_tok_s"]),
            float(row.get("batch_decay", 0.0)),
        )
        for name, row in data.get("classes", {}).items()
    }
    return classes, {str(k): str(v) for k, v in data.get("models", {}).items()}


def target_for(
    model: str, override_class: str | None = None, capacity: Path = CAPACITY_FILE
) -> Target | None:
    """The target of ``model`` (or of the class the scenario names for it) in the capacity
    spec ``capacity``; None if unknown."""
    classes, models = load_targets(capacity)
    name = override_class or models.get(model)
    return None if name is None else classes.get(name)


@dataclass(frozen=True, slots=True)
class ModelVerdict:
    """One model's result against its target."""

    model: str
    capacity_class: str | None
    decode_tok_s_p50: float | None
    target_min_tok_s: float | None
    target_max_tok_s: float | None
    aggregate_tok_s: float
    aggregate_target_tok_s: float | None
    above_band: bool
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.capacity_class,
            "decode_tok_s_p50": self.decode_tok_s_p50,
            "target_min_tok_s": self.target_min_tok_s,
            "target_max_tok_s": self.target_max_tok_s,
            "aggregate_tok_s": self.aggregate_tok_s,
            "aggregate_target_tok_s": self.aggregate_target_tok_s,
            "above_band": self.above_band,
            "pass": self.passed,
            "reason": self.reason,
        }


def judge(model: str, stats: GroupStats, target: Target | None) -> ModelVerdict:
    decode = stats.decode_tok_s.p50
    if target is None:
        return ModelVerdict(
            model,
            None,
            decode,
            None,
            None,
            stats.output_tok_s,
            None,
            False,
            True,
            "no target: model not in the capacity table",
        )
    aggregate_target = target.min_tok_s * stats.decoding_streams
    reasons = []
    if decode is None:
        reasons.append("no completed stream with two or more tokens")
    elif decode < target.min_tok_s:
        reasons.append(f"p50 decode {decode:.1f} tok/s < floor {target.min_tok_s:g}")
    if stats.output_tok_s < aggregate_target:
        reasons.append(
            f"aggregate {stats.output_tok_s:.1f} tok/s < {aggregate_target:.1f} "
            f"({target.min_tok_s:g} x {stats.decoding_streams:.2f} streams)"
        )
    above = decode is not None and decode > target.max_tok_s
    if not reasons:
        reasons.append("above the band (noted)" if above else "meets the floor")
    return ModelVerdict(
        model=model,
        capacity_class=target.capacity_class,
        decode_tok_s_p50=decode,
        target_min_tok_s=target.min_tok_s,
        target_max_tok_s=target.max_tok_s,
        aggregate_tok_s=stats.output_tok_s,
        aggregate_target_tok_s=aggregate_target,
        above_band=above,
        passed=decode is not None
        and decode >= target.min_tok_s
        and stats.output_tok_s >= aggregate_target,
        reason="; ".join(reasons),
    )


def missing_verdict(model: str, target: Target | None) -> ModelVerdict:
    """A model of the mix that completed no request in the run: a miss."""
    return ModelVerdict(
        model=model,
        capacity_class=None if target is None else target.capacity_class,
        decode_tok_s_p50=None,
        target_min_tok_s=None if target is None else target.min_tok_s,
        target_max_tok_s=None if target is None else target.max_tok_s,
        aggregate_tok_s=0.0,
        aggregate_target_tok_s=None,
        above_band=False,
        passed=False,
        reason="no request completed",
    )
