"""``python -m bench policies``: does the router under real load rank routing policies as the
simulator does?

One small heterogeneous fleet (four emulated vLLM boxes serving one 7B model at the per-stream
speeds the simulator gives an L4, an A10G, an RTX 4090 and an H100, four slots each) and one
open-loop workload (Poisson arrivals at ``--load`` of the fleet's capacity; the simulator's
"mixed" output lengths cut ``OUTPUT_SCALE`` times, so that a short window holds hundreds of
requests) run twice per policy: through the real router (its own process, the group set to the
policy, an agent beside each emulator: :func:`bench.cluster.launch`) driven by an aiohttp client
that reads TTFT from the SSE stream, and through the simulator (:func:`bench.sim.run.simulate`)
on the very same requests. Both drop the first ``WARMUP`` share of requests.

Policies are ranked by p99 TTFT. A pair is compared only when its simulated p99s differ by at
least ``--tie-ratio`` (else it is a tie, left out); the check passes when the real run orders
every compared pair as the simulator does and no request failed (exit 1 otherwise). The
summary goes to ``OUT/policies.json``, each cluster's logs to ``OUT/cluster-<policy>.log``.
Modules: :mod:`.fleet` (fleet, workload, cluster spec), :mod:`.load` (the open-loop client),
:mod:`.verdict` (ranks, pairs, table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.cluster import launch
from bench.policy_check.fleet import (
    DEFAULT_POLICIES,
    GROUP,
    CheckSettings,
    cluster_spec,
    fleet,
    workload,
)
from bench.policy_check.load import drive
from bench.policy_check.verdict import Row, render, report
from bench.runner import say
from bench.sim.metrics import WARMUP, summarize
from bench.sim.run import Setup, simulate
from bench.sim.workload import Floats, Requests
from bench.topology import stderr_to

LAG_WARN_S = 0.05  # dispatch lag above this: the client, not the router, shaped the arrivals


def _pct(values: Floats) -> tuple[float, float]:
    if not values.size:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


async def measure(policy: str, setup: Setup, reqs: Requests, out: Path) -> Row:
    """One policy, real (a fresh cluster) then simulated, over the same requests."""
    config = out / f"router-{policy}.toml"
    _write(config, f'[[groups]]\nname = "{GROUP}"\npolicy = "{policy}"\n')
    spec = cluster_spec(setup.nodes, config)
    async with contextlib.AsyncExitStack() as stack:
        with stderr_to(out / f"cluster-{policy}.log"):
            cluster = await stack.enter_async_context(launch(spec))
        say(f"{policy}: {len(reqs)} requests over {setup.duration_s:g}s at {cluster.base_url}")
        records = await drive(cluster.base_url, reqs)
    window = records[int(len(records) * WARMUP) :]
    ok = np.array([r.ttft_s for r in window if r.error is None and r.ttft_s is not None])
    served = Counter(r.node for r in window if r.error is None)
    sim = summarize(simulate(setup, policy, reqs))
    lags = np.array([r.dispatch_lag_s or 0.0 for r in records])
    return Row(
        policy,
        *_pct(ok),
        sim["ttft_p50_s"],
        sim["ttft_p99_s"],
        requests=len(window),
        errors=sum(r.error is not None for r in records),
        lag_p99_s=float(np.percentile(lags, 99)) if lags.size else 0.0,
        served={n.name: served[n.name] / max(1, ok.size) for n in setup.nodes},
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


async def run_check(s: CheckSettings, out: Path) -> dict[str, Any]:
    """Every policy, real and simulated; the report (also written to ``out/policies.json``)."""
    setup, reqs = workload(fleet(), s)
    rows = [await measure(policy, setup, reqs, out) for policy in s.policies]
    rep = report(rows, s, setup, reqs)
    _write(out / "policies.json", json.dumps(rep, indent=2) + "\n")
    for row in rows:
        if row.lag_p99_s > LAG_WARN_S:
            say(f"{row.policy}: dispatch lag p99 {row.lag_p99_s:.3f}s: the client was late")
    return rep


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("policies", help="real router vs simulator: same policy ordering?")
    cmd.add_argument("--duration", type=float, default=20.0, help="arrival window per policy (s)")
    cmd.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated")
    cmd.add_argument("--load", type=float, default=0.85, help="share of the fleet's capacity")
    cmd.add_argument("--tie-ratio", type=float, default=1.5, help="sim p99 ratio below: a tie")
    cmd.add_argument("--seed", type=int, default=1)
    cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    cmd.add_argument("--out", type=Path, help="default: results/bench/policies")


async def run_cli(args: argparse.Namespace) -> int:
    try:
        settings = CheckSettings(
            tuple(p for p in args.policies.split(",") if p),
            args.duration,
            args.load,
            args.tie_ratio,
            args.seed,
        )
    except ValueError as exc:
        say(str(exc))
        return 2
    rep = await run_check(settings, args.out or Path("results/bench/policies"))
    print(json.dumps(rep) if args.json else render(rep), flush=True)
    return 0 if rep["passed"] else 1
