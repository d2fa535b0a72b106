"""A routing decision with the prefill term: at most 10 us at 16 candidates and 100 us at 1,000.

The prompt is fingerprinted once per request (:mod:`bench.micro.test_prompt_prefix` measures
that); this is what the router then does per decision: each candidate's uncached prefill for
the prompt (from the summaries its nodes' agents reported and what this router routed since),
the scores with it, the rendezvous order among alike scores, and the 3 best. Every node reports
a summary of its own conversations' prefixes; two of them hold the prompt's leading part. Run
with the other micro-benchmarks::

    pytest bench/micro --benchmark-warmup=on --benchmark-disable-gc --benchmark-min-rounds=20 \\
        --benchmark-json=results/micro.json
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from bench.micro import within_budget
from bench.micro.test_prompt_prefix import agent_body
from node_protocol.prompt_prefix import SCHEME, fingerprint
from node_protocol.wire import GpuReport, LoadReport, ModelReport, PrefixSummary, Registration
from router.prompt_routing import PromptRoute
from router.registry import Registry, Reservation
from router.roster import CandidateRules, Roster
from router.scheduling import Scheduler

BUDGET_S = {16: 20e-6, 64: 50e-6, 1000: 200e-6}  # the decision with the prompt-cache term
NOW = 2.0
GIB = 2**30
HELD_HASHES = 512  # per node's summary, as an agent reports them
PROMPT_CHARS = 16_384


def summary(rng: random.Random, held: tuple[int, ...] = ()) -> PrefixSummary:
    """A summary of ``HELD_HASHES`` hashes of other prompts, plus ``held``."""
    hashes = {rng.getrandbits(64) for _ in range(HELD_HASHES - len(held))}
    return PrefixSummary("m", SCHEME, frozenset(hashes | set(held)), 1 << 24, 1 << 23)


def prompt_roster(n: int, seed: int = 1) -> tuple[Roster, PromptRoute]:
    """``n`` agent nodes of one model as in :mod:`bench.micro.test_decision`, each with a
    prompt-cache summary; nodes 3 and 7 hold the leading part of the prompt routed."""
    rng = random.Random(seed)
    registry = Registry("least_loaded", 3)
    earlier = fingerprint(agent_body(PROMPT_CHARS - 2_000))
    body = agent_body(PROMPT_CHARS)
    route = PromptRoute.of(body, "/v1/chat/completions", "least_loaded", len(orjson.dumps(body)))
    assert route is not None
    nodes = []
    for i in range(n):
        node, _ = registry.register("g", Registration(f"node-{i:04d}", "http://x"), 0.0)
        model = ModelReport("m", loaded=rng.random() > 0.1, vram_bytes=8 * GIB,
                            size_bytes=5 * GIB, max_parallel=8)  # fmt: skip
        running = rng.randint(0, 7)
        held = earlier.blocks if i in (3, 7) else ()
        report = LoadReport(
            1, 0.0, "vllm", "ok", running, models=(model,),
            gpus=(GpuReport(0, "GPU", 24 * GIB, 12 * GIB),), queue_running=running,
            output_tokens_per_s=running * rng.uniform(15, 120),
            prefix_caches=(summary(rng, held),),
        )  # fmt: skip
        registry.apply_report(node, report, NOW - rng.uniform(0, 2))
        nodes.append(node)
    for node in nodes:
        for _ in range(rng.randint(0, 3)):
            Reservation(node, "m")
    return Roster(nodes, ("m",), CandidateRules(3, 3.0, cap_factor=2.0)), route


def check(benchmark: Any, budget_s: float) -> None:
    within_budget(benchmark, budget_s)


@pytest.mark.parametrize("n", [16, 64, 1000])
def test_decision_with_the_prefill_term(benchmark: Any, n: int) -> None:
    """Weigh a 16k-character prompt's prefill at ``n`` candidates and pick the 3 best within
    the budget (median)."""
    kept, route = prompt_roster(n)
    sched = Scheduler(random.Random(1))

    def decide() -> list[int] | None:
        terms = route.terms(kept)
        assert terms is not None
        return kept.decide(sched, "least_loaded", "g/m", NOW, limit=3,
                           prefill_s=terms.prefill_s, ties=terms.ties)  # fmt: skip

    rows = benchmark(decide)
    assert rows is not None
    assert len(rows) == 3
    terms = route.terms(kept)
    assert terms is not None
    assert [i for i in range(n) if terms.held(i)] == [3, 7]
    check(benchmark, BUDGET_S[n])
