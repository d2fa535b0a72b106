"""Ranks, pairs and the verdict: policies ordered by p99 TTFT, real against simulated.

A pair is compared only when its simulated p99s differ by at least the tie ratio; the real run
must order it the same way. Pairs closer than that are ties, listed and left out.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from bench.policy_check.fleet import CheckSettings
from bench.sim.metrics import WARMUP
from bench.sim.run import Setup
from bench.sim.workload import Requests


@dataclass(frozen=True, slots=True)
class Row:
    """One policy's p50 / p99 TTFT (s), real and simulated, and how the real run went."""

    policy: str
    real_p50: float
    real_p99: float
    sim_p50: float
    sim_p99: float
    requests: int
    errors: int
    lag_p99_s: float
    served: dict[str, float]  # share of the real requests each node served


@dataclass(frozen=True, slots=True)
class Pair:
    better: str  # by the simulator
    worse: str
    sim_ratio: float
    real_ratio: float

    @property
    def agrees(self) -> bool:
        return self.real_ratio > 1.0


def compare(rows: list[Row], tie_ratio: float) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Pairs the simulator separates by ``tie_ratio`` or more (with the real ratio worse/better)
    and the pairs it calls ties."""
    pairs, ties = [], []
    for a, b in itertools.combinations(rows, 2):
        lo, hi = sorted((a, b), key=lambda r: r.sim_p99)
        if hi.sim_p99 < tie_ratio * lo.sim_p99:
            ties.append((lo.policy, hi.policy))
        else:
            real = hi.real_p99 / lo.real_p99 if lo.real_p99 > 0 else float("nan")
            pairs.append(Pair(lo.policy, hi.policy, hi.sim_p99 / lo.sim_p99, real))
    return pairs, ties


def report(rows: list[Row], s: CheckSettings, setup: Setup, reqs: Requests) -> dict[str, Any]:
    pairs, ties = compare(rows, s.tie_ratio)
    ranks = {k: sorted(rows, key=lambda r: float(getattr(r, k))) for k in ("real_p99", "sim_p99")}
    policies = {r.policy: dataclasses.asdict(r) for r in rows}
    for key, order in ranks.items():
        for i, r in enumerate(order):
            policies[r.policy][key.replace("p99", "rank")] = i + 1
    errors = sum(r.errors for r in rows)
    match = all(p.agrees for p in pairs)
    return {
        "fleet": [{"name": n.name, "gpu": n.gpu} for n in setup.nodes],
        "workload": {
            "requests": len(reqs),
            "rate_rps": round(setup.streams[0].rate, 2),
            "load": s.load,
            "duration_s": s.duration_s,
            "warmup_share": WARMUP,
        },
        "policies": policies,
        "compared": [{**dataclasses.asdict(p), "agrees": p.agrees} for p in pairs],
        "ties": [list(t) for t in ties],
        "tie_ratio": s.tie_ratio,
        "match": match,
        "errors": errors,
        "passed": match and errors == 0 and bool(pairs),
    }


def render(rep: dict[str, Any]) -> str:
    """The table, the pairs compared and the ties, and the verdict."""
    w, gpus = rep["workload"], "/".join(n["gpu"] for n in rep["fleet"])
    text = [
        f"TTFT (s) by policy: {w['requests']} requests at {w['rate_rps']} req/s ({w['load']:.0%}"
        f" of capacity) over {w['duration_s']:g} s, the first {w['warmup_share']:.0%} dropped",
        f"{'policy':<26}{'real p50':>9}{'real p99':>9}{'sim p50':>9}{'sim p99':>9}"
        f"  rank real/sim  errors  served % ({gpus}, real)",
    ]
    for name, r in rep["policies"].items():
        served = "/".join(f"{100 * v:.0f}" for v in r["served"].values())
        text.append(
            f"{name:<26}{r['real_p50']:9.3f}{r['real_p99']:9.3f}{r['sim_p50']:9.3f}"
            f"{r['sim_p99']:9.3f}  {r['real_rank']:>9} / {r['sim_rank']:<3}"
            f"{r['errors']:>6}  {served}"
        )
    for p in rep["compared"]:
        text.append(
            f"compared: {p['better']} < {p['worse']} (p99 ratio sim {p['sim_ratio']:.2f}, real "
            f"{p['real_ratio']:.2f}): {'agrees' if p['agrees'] else 'DIFFERS'}"
        )
    text += [f"tie (sim p99 within x{rep['tie_ratio']:g}): {a} ~ {b}" for a, b in rep["ties"]]
    verdict = "MATCH" if rep["passed"] else "DIFFERS" if not rep["match"] else "INCONCLUSIVE"
    text.append(f"{verdict}: the ordering by p99 TTFT, real vs simulated ({rep['errors']} errors)")
    return "\n".join(text)
