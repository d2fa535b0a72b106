"""The fleet and the workload both sides run: the simulator's numbers, as emulated nodes too.

Four boxes serving one 7B model at the per-stream speeds the simulator gives an L4, an A10G, an
RTX 4090 and an H100 (four slots each, from ``bench/capacity.toml``); Poisson arrivals at a share
of the fleet's capacity with the simulator's "mixed" output lengths cut ``OUTPUT_SCALE`` times,
so that a short window holds hundreds of requests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cluster import ClusterSpec, NodeSpec
from bench.sim.cluster import PREFILL_RATIO, dedicated, engines_for
from bench.sim.cluster import NodeSpec as SimNode
from bench.sim.run import Setup
from bench.sim.workload import Requests, Stream, lengths
from router.scheduling import POLICIES

MODEL = "llama3.1:8b"
GROUP = "policy-check"
FLEET = ("L4", "A10G", "RTX4090", "H100-80G")
PROMPT_TOKENS = 8  # the emulator charges one token per four characters
OUTPUT_SCALE = 0.125  # mixed outputs (~260 tokens) cut to ~32: hundreds of requests in 20 s
REPORT_INTERVAL_S = 0.5  # the agents' (and the simulated agents') report interval
DEFAULT_POLICIES = ("least_loaded", "round_robin", "random")


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """One comparison: the policies, the load and window, the tie margin, the draw."""

    policies: tuple[str, ...] = DEFAULT_POLICIES
    duration_s: float = 20.0
    load: float = 0.85
    tie_ratio: float = 1.5
    seed: int = 1

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or len(set(self.policies)) < 2:
            raise ValueError(f"need two or more distinct policies of {', '.join(POLICIES)}")
        if not self.duration_s > 0 or not 0 < self.load < 1 or not self.tie_ratio > 1:
            raise ValueError("duration_s must be > 0, load in (0, 1), tie_ratio > 1")


def fleet() -> tuple[SimNode, ...]:
    return tuple(dedicated([(MODEL, gpu, 1) for gpu in FLEET]))


def workload(nodes: tuple[SimNode, ...], s: CheckSettings) -> tuple[Setup, Requests]:
    """The simulator's setup (no concurrency caps: the agents report no slot count, as vLLM's
    do not) and its requests, drawn once for every policy and both sides."""
    capacity = sum(e.capacity_units_s() for e in engines_for(nodes))
    _, outputs = lengths("mixed", 100_000, np.random.default_rng(99))
    work = float(np.maximum(1.0, np.round(outputs * OUTPUT_SCALE)).mean())
    rate = s.load * capacity / (work + PROMPT_TOKENS / PREFILL_RATIO)
    setup = Setup(
        nodes,
        (Stream(rate, [MODEL], [1.0]),),
        requests=round(rate * s.duration_s),
        duration_s=s.duration_s,
        report_interval_s=REPORT_INTERVAL_S,
        cap_factor=0.0,
        seed=s.seed,
    )
    reqs = setup.draw()
    output = np.maximum(1.0, np.round(reqs.output * OUTPUT_SCALE))
    return setup, dataclasses.replace(
        reqs, prompt=np.full(len(reqs), float(PROMPT_TOKENS)), output=output
    )


def cluster_spec(nodes: tuple[SimNode, ...], config: Path) -> ClusterSpec:
    """The same fleet as emulated vLLM boxes; the first token takes the simulator's prefill."""
    emulated = []
    for engine in engines_for(nodes):
        first_ms = 1000.0 * (PROMPT_TOKENS / PREFILL_RATIO + 1.0) / engine.tok_s
        emulated.append(
            NodeSpec(
                nodes[engine.node].name,
                "vllm",
                (MODEL,),
                tok_s=engine.tok_s,
                ttft_ms=round(first_ms, 3),
                slots=engine.slots,
            )
        )
    return ClusterSpec(
        group=GROUP,
        nodes=tuple(emulated),
        router_args=("--config", str(config)),
        agent_args=("--report-interval", str(REPORT_INTERVAL_S)),
    )
