"""Calibration: before a run is trusted, Locust must measure an emulated node's known TTFT and
decode rate back within the tolerance, directly and through the router.

The node decodes ``tok_s`` per stream alone and ``tok_s / (1 + batch_decay * (n - 1))`` with
``n`` streams at once (the emulator's documented timing, the class's ``batch_decay`` from the
capacity table); it gets one slot per user, so nothing queues and TTFT is ``ttft_ms``. A miss
means the load generator (or the machine under it) was the bottleneck.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loadrun import LocustPlan, run_locust
from bench.metrics import Window, group_stats, load_records
from bench.scenario import Calibration, Slo
from bench.targets import target_for
from bench.topology import NodeSettings, node_paths


@dataclass(frozen=True, slots=True)
class PathCalibration:
    """What one path measured against what the node was set to."""

    path: str
    ttft_ms_p50: float | None
    decode_tok_s_p50: float | None
    ttft_error: float | None  # relative: measured / expected - 1
    decode_error: float | None
    requests: int
    errors: int
    generator_cpu_percent: float | None
    ok: bool


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    expected_ttft_ms: float
    expected_decode_tok_s: float
    tolerance: float
    users: int
    paths: tuple[PathCalibration, ...]

    @property
    def ok(self) -> bool:
        return bool(self.paths) and all(p.ok for p in self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def expected_decode(cal: Calibration, users: int) -> float:
    target = target_for(cal.model)
    decay = target.batch_decay if target is not None else 0.0
    return cal.tok_s / (1 + decay * (users - 1))


def _relative(measured: float | None, expected: float) -> float | None:
    return None if measured is None else measured / expected - 1


def judge_path(
    path: str, stats: Any, cal: Calibration, expected_tok_s: float, cpu: float | None
) -> PathCalibration:
    ttft_err = _relative(stats.ttft_ms.p50, cal.ttft_ms)
    decode_err = _relative(stats.decode_tok_s.p50, expected_tok_s)
    ok = (
        ttft_err is not None
        and decode_err is not None
        and abs(ttft_err) <= cal.tolerance
        and abs(decode_err) <= cal.tolerance
        and stats.ok > 0
    )
    return PathCalibration(
        path=path,
        ttft_ms_p50=stats.ttft_ms.p50,
        decode_tok_s_p50=stats.decode_tok_s.p50,
        ttft_error=ttft_err,
        decode_error=decode_err,
        requests=stats.requests,
        errors=stats.requests - stats.ok,
        generator_cpu_percent=cpu,
        ok=ok,
    )


def calibration_scenario(cal: Calibration, folder: Path) -> Path:
    """A one-entry scenario file the Locust processes read."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "calibration.toml"
    path.write_text(
        f'description = "calibration"\n[load]\nusers = 1\nduration_s = {cal.duration_s}\n'
        f"warmup_s = {cal.warmup_s}\n[[mix]]\n"
        f'model = "{cal.model}"\nprompt_tokens = 16\nmax_tokens = {cal.max_tokens}\n',
        encoding="utf-8",
    )
    return path


async def calibrate(cal: Calibration, users: int, folder: Path) -> CalibrationResult:
    """Run Locust at ``users`` streams against the known node, directly then via the router."""
    scenario = calibration_scenario(cal, folder)
    node = NodeSettings(model=cal.model, tok_s=cal.tok_s, ttft_ms=cal.ttft_ms, slots=users)
    expected = expected_decode(cal, users)
    results = []
    async with node_paths(node, folder / "logs", agent=False, references=False) as topo:
        for path in ("direct", "router"):
            records = folder / f"records-{path}"
            run = await run_locust(
                LocustPlan(
                    host=topo.bases[path],
                    scenario=scenario,
                    records=records,
                    users=users,
                    spawn_rate=users,
                    duration_s=cal.duration_s,
                    warmup_s=cal.warmup_s,
                    label=f"calibration {path}",
                    log=folder / f"locust-{path}.log",
                )
            )
            recs = load_records(records)
            stats = group_stats(recs, Window.steady(recs, cal.warmup_s, cal.duration_s), Slo())
            cpu = max(run.cpu_percent) if run.cpu_percent else None
            results.append(judge_path(path, stats, cal, expected, cpu))
    return CalibrationResult(
        expected_ttft_ms=cal.ttft_ms,
        expected_decode_tok_s=expected,
        tolerance=cal.tolerance,
        users=users,
        paths=tuple(results),
    )
