"""``python -m bench run``: calibrate, start the scenario's cluster (or use ``--target-url``),
drive it with Locust, compute the figures, judge them and write the reports."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.calibration import CalibrationResult, calibrate
from bench.cluster import ClusterSpec, launch
from bench.loadrun import LocustPlan, LocustResult, run_locust
from bench.metrics import RunStats, load_records, run_stats
from bench.outcome import RunOutcome
from bench.overhead.suite import OverheadSettings, run_overhead
from bench.records import ClientRecord
from bench.scenario import Scenario
from bench.targets import ModelVerdict, judge, missing_verdict, target_for
from bench.topology import RouterWrapper, stderr_to


@dataclass(frozen=True, slots=True)
class RunOptions:
    scenario: Scenario
    scenario_path: Path
    out: Path
    target_url: str | None = None
    workers: int = 0
    calibrate: bool = True
    overhead: OverheadSettings | None = None
    wrapper: RouterWrapper | None = None  # the overhead benchmark's router (planted delays)


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def node_shares(
    records: list[ClientRecord], stats: RunStats, spec: ClusterSpec | None
) -> dict[str, dict[str, float]]:
    """Per model, the share of its steady-window requests each serving node took (nodes the
    cluster spec lists for the model count even when they got none)."""
    window = stats.window
    out: dict[str, dict[str, float]] = {}
    for model in stats.models:
        served = Counter(
            r.node or "?"
            for r in records
            if r.model == model and r.error is None and window.start <= r.wall_send <= window.end
        )
        if spec is not None:
            for node in spec.nodes:
                if model in node.models:
                    served.setdefault(node.name, 0)
        total = sum(served.values()) or 1
        out[model] = {node: count / total for node, count in sorted(served.items())}
    return out


async def run_scenario(opts: RunOptions) -> RunOutcome:
    scenario = opts.scenario
    load = scenario.load
    opts.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    notes: list[str] = []
    cal_result = await _calibration(opts)
    records_dir = opts.out / "records"
    host, spec, locust = await _load(opts, records_dir, notes)
    records = load_records(records_dir)
    if not records:
        notes.append(f"no records were written: see {opts.out / 'locust.log'}")
    stats = run_stats(records, load.warmup_s, load.duration_s, scenario.slo)
    notes.append(f"targets from {scenario.capacity.name}")
    verdicts = _verdicts(scenario, stats)
    missing = [m for m in scenario.models if m not in stats.models]
    notes += [f"model {m}: no request completed" for m in missing]
    overhead = None
    if opts.overhead is not None:
        say("overhead benchmark (paired, interleaved)")
        overhead = await run_overhead(opts.overhead, opts.out / "overhead-logs", opts.wrapper)
    outcome = RunOutcome(
        scenario=scenario,
        target=host,
        cluster=None if scenario.cluster is None or opts.target_url else scenario.cluster.stem,
        started=started,
        stats=stats,
        verdicts=verdicts,
        records=records,
        locust=locust,
        workers=opts.workers,
        calibration=cal_result,
        overhead=overhead,
        share=node_shares(records, stats, spec),
        notes=notes,
    )
    return outcome


async def _load(
    opts: RunOptions, records_dir: Path, notes: list[str]
) -> tuple[str, ClusterSpec | None, LocustResult]:
    """The load itself: Locust against the scenario's cluster (started and stopped here) or an
    external target."""
    scenario = opts.scenario
    load = scenario.load
    spec = None
    async with contextlib.AsyncExitStack() as stack:
        if opts.target_url:
            host = opts.target_url.rstrip("/")
            notes.append("external target: node shares are as observed (no cluster spec)")
        else:
            if scenario.cluster is None:
                raise SystemExit(f"scenario {scenario.name} names no cluster: pass --target-url")
            spec = ClusterSpec.from_toml(scenario.cluster, router_port=0)
            say(f"starting cluster {scenario.cluster.stem} ({len(spec.nodes)} nodes)")
            t0 = time.monotonic()
            with stderr_to(opts.out / "cluster.log"):
                cluster = await stack.enter_async_context(launch(spec))
            host = cluster.base_url
            say(f"cluster ready in {time.monotonic() - t0:.1f}s at {host}")
        say(
            f"Locust: {load.mode} loop, {load.users} users, {load.duration_s:g}s "
            f"(warm-up {load.warmup_s:g}s){f', {opts.workers} workers' if opts.workers else ''}"
        )
        locust = await run_locust(
            LocustPlan(
                host=host,
                scenario=opts.scenario_path,
                records=records_dir,
                users=load.users,
                spawn_rate=load.spawn_rate,
                duration_s=load.duration_s,
                warmup_s=load.warmup_s,
                workers=opts.workers,
                label=scenario.name,
                log=opts.out / "locust.log",
            )
        )
    return host, spec, locust


async def _calibration(opts: RunOptions) -> CalibrationResult | None:
    cal = opts.scenario.calibration
    if not (opts.calibrate and cal.enabled):
        return None
    say(f"calibrating: {cal.users} streams at {cal.tok_s:g} tok/s, TTFT {cal.ttft_ms:g} ms")
    result = await calibrate(cal, cal.users, opts.out / "calibration")
    say(f"calibration {'ok' if result.ok else 'MISSED'}")
    return result


def _verdicts(scenario: Scenario, stats: RunStats) -> list[ModelVerdict]:
    """Each model's verdict against its target; a model with no completed request fails."""
    classes = {e.model: e.capacity_class for e in scenario.mix}
    targets = {m: target_for(m, classes.get(m), scenario.capacity) for m in scenario.models}
    found = [judge(m, stats.models[m], targets[m]) for m in scenario.models if m in stats.models]
    return found + [
        missing_verdict(m, targets[m]) for m in scenario.models if m not in stats.models
    ]
