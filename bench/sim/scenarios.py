"""The named scenarios, each a fleet, a workload and the checks the issue asks of them.

``run(name, size, seed)`` returns ``{"scenario", "policies": {NAME: figures}, "checks"}``;
``size`` scales the request count (1.0 = the full runs quoted in the README, the tests use
less). Every policy of a scenario sees the very same requests (the agents' later turns arrive
when the run has answered the turn before, so their times differ). ``clairvoyant`` is the
reference router of :mod:`bench.sim.clairvoyant`, always a single one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from bench.sim.agentic import Agents
from bench.sim.cluster import NodeSpec, dedicated, engines_for
from bench.sim.metrics import summarize
from bench.sim.routers import BLIND, PREFIX_AFFINITY
from bench.sim.run import CLAIRVOYANT, Outcome, Setup, simulate
from bench.sim.workload import Stream, mean_work
from router.admission import AdmissionLimits
from router.scheduling import POLICIES

GPU_MIX = ("L4", "A10G", "RTX3090", "RTX4090", "A100-80G", "H100-80G")
HETERO = (
    ("llama3.1:8b", "L4", 3),
    ("llama3.1:8b", "A10G", 3),
    ("llama3.1:8b", "RTX3090", 2),
    ("llama3.1:8b", "RTX4090", 2),
    ("llama3.1:8b", "A100-80G", 1),
    ("llama3.1:8b", "H100-80G", 1),
    ("llama2:13b", "L4", 2),
    ("llama2:13b", "A10G", 2),
    ("llama2:13b", "RTX3090", 2),
    ("llama2:13b", "RTX4090", 1),
    ("llama2:13b", "A100-80G", 1),
    ("codellama:34b", "A10G", 1),
    ("codellama:34b", "RTX3090", 1),
    ("codellama:34b", "A100-80G", 1),
    ("codellama:34b", "H100-80G", 1),
)
BASELINES = (CLAIRVOYANT, "least_loaded", "power_of_two", "round_robin")
AGENTIC = (*BASELINES, BLIND, "sticky", PREFIX_AFFINITY)
Report = dict[str, Any]


def model_rates(load: float, nodes: Sequence[NodeSpec], lengths: str) -> dict[str, float]:
    """Requests/s per model that put each model's loaded engines at ``load`` of capacity
    (every slot busy)."""
    units = mean_work(lengths)
    rates: dict[str, float] = {}
    for spec in engines_for(nodes):
        if spec.model in nodes[spec.node].loaded:
            rates[spec.model] = rates.get(spec.model, 0.0) + spec.capacity_units_s() / units
    return {m: load * r for m, r in sorted(rates.items())}


def stream(rates: dict[str, float], tenant: int = 0, **kw: Any) -> Stream:
    return Stream(sum(rates.values()), list(rates), list(rates.values()), tenant=tenant, **kw)


def _hetero(load: float, requests: int, lengths: str = "mixed") -> Setup:
    nodes = tuple(dedicated(HETERO))
    return Setup(nodes, (stream(model_rates(load, nodes, lengths), lengths=lengths),), requests)


def _run_all(setup: Setup, policies: Sequence[str]) -> dict[str, Outcome]:
    reqs = setup.draw()
    return {p: simulate(setup, p, reqs) for p in policies}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def hetero_85(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """Mixed GPUs (L4 to H100) and models (8B, 13B, 34B) at 85% of capacity."""
    setup = dataclasses.replace(_hetero(0.85, int(40_000 * size)), seed=seed)
    runs = _run_all(setup, policies or (CLAIRVOYANT, *POLICIES))
    res = {p: summarize(o) for p, o in runs.items()}
    ll, rr, cv = res["least_loaded"], res["round_robin"], res[CLAIRVOYANT]
    checks = {
        "p99_ttft_ll_over_rr": _ratio(ll["ttft_p99_s"], rr["ttft_p99_s"]),
        "p99_ttft_ll_over_clairvoyant": _ratio(ll["ttft_p99_s"], cv["ttft_p99_s"]),
        "throughput_ll_over_rr": _ratio(ll["throughput_tok_s"], rr["throughput_tok_s"]),
    }
    checks["pass"] = (
        checks["p99_ttft_ll_over_rr"] <= 0.5
        and checks["p99_ttft_ll_over_clairvoyant"] <= 1.2
        and checks["throughput_ll_over_rr"] >= 1.0
    )
    return {"scenario": "hetero-85", "policies": res, "checks": checks}


def heavy_85(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """The hetero-85 fleet with heavy-tailed (Pareto) output lengths."""
    setup = dataclasses.replace(_hetero(0.85, int(40_000 * size), "heavy"), seed=seed)
    runs = _run_all(setup, policies or BASELINES)
    return {"scenario": "heavy-85", "policies": {p: summarize(o) for p, o in runs.items()}}


def replicas_4(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """The hetero-85 fleet behind 4 router replicas that get each report 1 s after it left
    the node (reports every second): each replica sees a quarter of the traffic."""
    single = dataclasses.replace(_hetero(0.85, int(40_000 * size)), seed=seed)
    setup = dataclasses.replace(single, replicas=4, report_delay_s=1.0)
    runs = _run_all(setup, policies or (*BASELINES, "sticky"))
    res = {p: summarize(o) for p, o in runs.items()}
    res["least_loaded/1-router"] = summarize(simulate(single, "least_loaded"))
    ratio = _ratio(res["least_loaded"]["ttft_p99_s"], res["least_loaded/1-router"]["ttft_p99_s"])
    checks = {"p99_ttft_4_routers_over_1": ratio, "pass": ratio <= 1.25}
    return {"scenario": "replicas-4", "policies": res, "checks": checks}


def ollama_nodes() -> tuple[NodeSpec, ...]:
    """Twelve 24 GB boxes that can each serve four models but hold only some at a time."""
    models = ("codellama:34b", "llama2:13b", "llama3.1:8b", "mistral:7b")
    first = ["llama3.1:8b"] * 6 + ["llama2:13b"] * 3 + ["codellama:34b"] * 2 + [""]
    gpus = ("RTX3090", "RTX4090", "A10G", "L4")
    return tuple(
        NodeSpec(f"ollama-{i:02d}", gpus[i % 4], 1, models, (m,) if m else ())
        for i, m in enumerate(first)
    )


def cold_start(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """Ollama-style swapping: models load on demand and evict idle ones; one model starts
    loaded nowhere. A cold load is avoidable when a node with the model loaded had a free
    slot at that moment."""
    nodes = ollama_nodes()
    mix = {"llama3.1:8b": 0.5, "llama2:13b": 0.25, "mistral:7b": 0.15, "codellama:34b": 0.1}
    specs = engines_for(nodes)
    units = mean_work("mixed")
    per_node = [
        1.0 / sum(mix[s.model] * units / s.capacity_units_s() for s in specs if s.node == n)
        for n in range(len(nodes))
    ]
    rate = 0.5 * sum(per_node)
    workload = Stream(rate, list(mix), list(mix.values()))
    setup = Setup(nodes, (workload,), int(20_000 * size), seed=seed)
    runs = _run_all(setup, policies or (*BASELINES, "random", "least_connections"))
    res = {p: summarize(o) for p, o in runs.items()}
    avoidable = res["least_loaded"]["avoidable_cold_loads"]
    checks = {"least_loaded_avoidable_cold_loads": avoidable, "pass": avoidable == 0}
    return {"scenario": "cold-start", "policies": res, "checks": checks}


def _flood(
    nodes: tuple[NodeSpec, ...], size: float, seed: int, policy: str
) -> tuple[dict[str, float], float]:
    """One policy's figures with the flood, and the good tenant's p99 TTFT without it."""
    good = stream(model_rates(0.3, nodes, "mixed"), tenant=0)
    flood = stream(model_rates(1.0, nodes, "mixed"), tenant=1)
    limits = AdmissionLimits(max_queue=256, max_wait_s=30.0)
    alone = Setup(nodes, (good,), int(10_000 * size), limits=limits, seed=seed)
    alone = dataclasses.replace(alone, duration_s=alone.requests / good.rate)
    flooded = simulate(dataclasses.replace(alone, streams=(good, flood)), policy)
    figures, mine = summarize(flooded), summarize(flooded, tenant=0)
    figures["good_tenant_ttft_p99_s"] = mine["ttft_p99_s"]
    figures["good_tenant_rejected"] = mine["rejected"]
    base = summarize(simulate(alone, policy))["ttft_p99_s"]
    figures["good_tenant_alone_ttft_p99_s"] = base
    return figures, _ratio(mine["ttft_p99_s"], base)


def tenant_flood(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """A well-behaved tenant at 30% of a 12-node pool's capacity, alone and then with a second
    tenant flooding the router at 100% more (admission queue 256, 30 s wait): the fair queue
    must keep the first tenant's TTFT. Also run on the mixed fleet, where the flood pushes
    the tenant onto slow GPUs at full batch as well (reported, not checked)."""
    pool = tuple(dedicated([("llama3.1:8b", "RTX4090", 12)]))
    res: dict[str, dict[str, float]] = {}
    checks: dict[str, Any] = {}
    for policy in policies or BASELINES:
        res[policy], checks[f"{policy}_good_p99_flood_over_alone"] = _flood(
            pool, size, seed, policy
        )
    _, checks["least_loaded_mixed_fleet_good_p99_flood_over_alone"] = _flood(
        tuple(dedicated(HETERO)), size, seed, "least_loaded"
    )
    checks["pass"] = checks.get("least_loaded_good_p99_flood_over_alone", 9.0) <= 1.5
    return {"scenario": "tenant-flood", "policies": res, "checks": checks}


def scale_1000(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """996 mixed nodes, a million requests per policy at full size."""
    layout = [(m, g, int(1000 * share / len(GPU_MIX))) for m, share in (
        ("llama3.1:8b", 0.6), ("llama2:13b", 0.3), ("codellama:34b", 0.1)
    ) for g in GPU_MIX]  # fmt: skip
    nodes = tuple(dedicated(layout))
    setup = Setup(nodes, (stream(model_rates(0.85, nodes, "mixed")),), int(1e6 * size), seed=seed)
    runs = _run_all(setup, policies or BASELINES)
    res = {p: summarize(o) for p, o in runs.items()}
    wall = res.get("least_loaded", {}).get("wall_s", 0.0)
    checks = {"nodes": len(nodes), "least_loaded_wall_s": wall, "pass": wall < 120.0}
    return {"scenario": "scale-1000", "policies": res, "checks": checks}


def sessions(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """Chat sessions on 7B nodes that cache a session's prompt prefix: ``sticky`` keeps a
    session on one node (a cache hit prefills 80% less) and falls back when it is full."""
    nodes = tuple(dedicated([("llama3.1:8b", g, 2) for g in GPU_MIX]))
    rates = model_rates(0.8, nodes, "mixed")
    setup = Setup(nodes, (stream(rates, sessions=400),), int(20_000 * size), seed=seed)
    runs = _run_all(setup, policies or (*BASELINES, "sticky"))
    return {"scenario": "sessions", "policies": {p: summarize(o) for p, o in runs.items()}}


def _agentic(size: float, seed: int) -> Setup:
    nodes = tuple(dedicated([("llama3.1:8b", g, 2) for g in GPU_MIX]))
    return Setup(nodes, (), int(20_000 * size), seed=seed, agents=Agents())


def agentic(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """36 agents in 6 groups (system prompts of 2-8k tokens shared in a group, tools of their
    own) running tool-calling sessions of 5-15 turns on 7B engines over mixed GPUs, with prompt
    caches (:mod:`bench.sim.agentic`). The checks are the prefix-aware default's targets:
    p50 TTFT at most 0.4x round robin's, p50 and p99 within 1.15x of the clairvoyant's."""
    runs = _run_all(_agentic(size, seed), policies or AGENTIC)
    res = {p: summarize(o) for p, o in runs.items()}
    checks: dict[str, Any] = {}
    ll, rr, cv = (res.get(p) for p in ("least_loaded", "round_robin", CLAIRVOYANT))
    if ll and rr and cv:
        checks = {
            "p50_ttft_ll_over_rr": _ratio(ll["ttft_p50_s"], rr["ttft_p50_s"]),
            "p50_ttft_ll_over_clairvoyant": _ratio(ll["ttft_p50_s"], cv["ttft_p50_s"]),
            "p99_ttft_ll_over_clairvoyant": _ratio(ll["ttft_p99_s"], cv["ttft_p99_s"]),
            "throughput_ll_over_rr": _ratio(ll["throughput_tok_s"], rr["throughput_tok_s"]),
        }
        checks["pass"] = (
            checks["p50_ttft_ll_over_rr"] <= 0.4
            and checks["p50_ttft_ll_over_clairvoyant"] <= 1.15
            and checks["p99_ttft_ll_over_clairvoyant"] <= 1.15
        )
    return {"scenario": "agentic", "policies": res, "checks": checks}


def agentic_replicas(size: float, seed: int, policies: Sequence[str] = ()) -> Report:
    """``agentic`` behind 4 router replicas that get each report (load, and what changed in the
    agents' maps of the prompt caches) 1 s after it left the node; the turns of one session
    reach any replica. Each policy also runs behind one router, for its cache hit share; the
    check is the default's target: 4 replicas keep 95% of one router's share."""
    single = _agentic(size, seed)
    setup = dataclasses.replace(single, replicas=4, report_delay_s=1.0)
    reqs = setup.draw()
    res: dict[str, dict[str, float]] = {}
    checks: dict[str, Any] = {}
    for p in policies or AGENTIC:
        res[p] = summarize(simulate(setup, p, reqs))
        if p == CLAIRVOYANT:
            continue
        one = res[f"{p}/1-router"] = summarize(simulate(single, p, reqs))
        share = _ratio(res[p]["cache_hit_share"], one["cache_hit_share"])
        checks[f"{p}_hit_share_4_over_1"] = share
    if "least_loaded_hit_share_4_over_1" in checks:
        checks["pass"] = checks["least_loaded_hit_share_4_over_1"] >= 0.95
    return {"scenario": "agentic-replicas", "policies": res, "checks": checks}


SCENARIOS: dict[str, Callable[..., Report]] = {
    "hetero-85": hetero_85,
    "replicas-4": replicas_4,
    "cold-start": cold_start,
    "tenant-flood": tenant_flood,
    "scale-1000": scale_1000,
    "heavy-85": heavy_85,
    "sessions": sessions,
    "agentic": agentic,
    "agentic-replicas": agentic_replicas,
}


def load_sweep(
    policies: Sequence[str], loads: Sequence[float], requests: int, seed: int
) -> dict[str, list[float]]:
    """p99 TTFT per policy at each load on the hetero-85 fleet (for the plot)."""
    out: dict[str, list[float]] = {p: [] for p in policies}
    for load in loads:
        setup = dataclasses.replace(_hetero(load, requests), seed=seed)
        for p, o in _run_all(setup, policies).items():
            out[p].append(summarize(o)["ttft_p99_s"])
    return out


def run(name: str, size: float = 1.0, seed: int = 1, policies: Sequence[str] = ()) -> Report:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name](size, seed, policies)
