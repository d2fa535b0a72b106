"""The simulator's prompt caches, agent sessions and clairvoyant reference."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from bench.sim.agentic import Agents
from bench.sim.cluster import PREFILL_RATIO, dedicated, engines_for
from bench.sim.prefix import BLOCK_TOKENS, PrefixCache, PrefixView
from bench.sim.run import CLAIRVOYANT, Outcome, Setup, Simulation, simulate
from bench.sim.scenarios import _agentic, _hetero, agentic, agentic_replicas
from bench.sim.workload import Requests, Turns

TWO_3090 = tuple(dedicated([("llama3.1:8b", "RTX3090", 2)]))


def conversation(prompts: list[float], outputs: list[float], think_s: float) -> Requests:
    """One conversation's turns, the first at time 0, each prompt extending the last."""
    n = len(prompts)
    prompt, output = np.array(prompts), np.array(outputs)
    kept = ((prompt + output) // BLOCK_TOKENS).astype(np.int64)
    turns = Turns(
        conv=np.zeros(n, dtype=np.int64),
        blocks=(prompt // BLOCK_TOKENS).astype(np.int64),
        kept=kept,
        after=np.arange(n, dtype=np.int64) - 1,
        think=np.full(n, think_s),
        chains=[list(range(1, int(kept.max()) + 1))],
    )
    zeros = np.zeros(n, dtype=np.int64)
    arrival = np.full(n, np.nan)
    arrival[0] = 0.0
    return Requests(arrival, zeros, zeros, zeros, prompt, output, turns)


def run_conversation(policy: str) -> Outcome:
    reqs = conversation([2000.0, 2600.0], [100.0, 50.0], think_s=1.5)
    return simulate(Setup(TWO_3090, (), len(reqs)), policy, reqs)


def leading(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


class TestPrefixCache:
    """An engine's prefix cache: whole blocks, a leading run, least recently used evicted."""

    def test_capacity_evicts_least_recently_used(self) -> None:
        """Past its capacity the cache drops the least recently used blocks, and of one
        prompt the tail before the head."""
        cache = PrefixCache(4 * BLOCK_TOKENS + 100)
        cache.touch([1, 2, 3], 3)
        cache.touch([7, 8], 2)
        assert len(cache.blocks) == 4
        assert cache.match([1, 2, 3], 3) == 2
        assert cache.match([7, 8], 2) == 2

    def test_a_used_prefix_is_kept(self) -> None:
        """Touching a prompt again makes its blocks the most recent: others go first."""
        cache = PrefixCache(4 * BLOCK_TOKENS)
        cache.touch([1, 2], 2)
        cache.touch([5, 6], 2)
        cache.touch([1, 2], 2)
        cache.touch([9], 1)
        assert cache.match([1, 2], 2) == 2
        assert cache.match([5, 6], 2) == 1

    def test_only_the_leading_run_counts(self) -> None:
        """A block held after a missing one is no use: the prompt is read from the gap on."""
        cache = PrefixCache(100 * BLOCK_TOKENS)
        cache.touch([1, 2, 3, 4], 4)
        assert cache.match([1, 2, 9, 4], 4) == 2
        assert cache.match([1, 2, 3, 4, 5], 5) == 4
        assert cache.match([1, 2, 3, 4], 3) == 3


class TestEnginePrefill:
    """A turn prefills only what its engine does not hold."""

    def test_next_turn_hits_its_prefix_on_the_same_node(self) -> None:
        """Kept on its node, the second turn finds the first turn's prompt and answer cached
        (whole blocks) and prefills the rest; the first turn prefilled all of its prompt."""
        o = run_conversation("prefix_affinity")
        tok_s = engines_for(TWO_3090)[0].tok_s  # batch of one: the per-stream speed
        cached = ((2000 + 100) // BLOCK_TOKENS) * BLOCK_TOKENS
        assert o.cached.tolist() == [0.0, cached]
        assert o.ttft[0] == pytest.approx((2000 / PREFILL_RATIO + 1) / tok_s)
        assert o.ttft[1] == pytest.approx(((2600 - cached) / PREFILL_RATIO + 1) / tok_s)

    def test_next_turn_misses_on_another_node(self) -> None:
        """Round robin sends the second turn to the other node, which holds nothing of it."""
        o = run_conversation("round_robin")
        tok_s = engines_for(TWO_3090)[0].tok_s
        assert o.cached.tolist() == [0.0, 0.0]
        assert o.ttft[1] == pytest.approx((2600 / PREFILL_RATIO + 1) / tok_s)

    def test_next_turn_comes_after_the_answer_and_the_think_time(self) -> None:
        """A later turn arrives when the one before it has ended, plus its think time."""
        o = run_conversation("least_loaded")
        arrival = o.requests.arrival
        assert arrival[1] == pytest.approx(arrival[0] + o.e2e[0] + 1.5)


class TestPrefixView:
    """A replica's map: the agents' reports, plus what it routed since each was taken."""

    def test_routed_blocks_count_until_a_later_report(self) -> None:
        """Blocks this replica routed count at once; a report taken before them leaves them,
        one taken after them replaces them with what the agent had."""
        view = PrefixView(2)
        view.route(0, [1, 2, 3], 3, now=1.0)
        assert view.cached_tokens([1, 2, 3, 4], 4).tolist() == [3 * BLOCK_TOKENS, 0.0]
        view.take([0], [[]], taken_at=0.5)
        assert view.cached_tokens([1, 2, 3], 3)[0] == 3 * BLOCK_TOKENS
        view.take([0], [[(1, True), (2, True)]], taken_at=1.5)
        assert view.cached_tokens([1, 2, 3], 3)[0] == 2 * BLOCK_TOKENS
        view.take([0], [[(1, False)]], taken_at=2.5)
        assert view.cached_tokens([1, 2, 3], 3)[0] == 0.0


@pytest.fixture(scope="module")
def reqs() -> Requests:
    return Agents().draw(TWO_3090, 800, {"llama3.1:8b": 0}, seed=3)


class TestAgenticWorkload:
    """Agents' sessions: prompts that grow turn over turn, system prompts shared by groups."""

    def test_each_prompt_extends_the_one_before(self, reqs: Requests) -> None:
        """A later turn's prompt holds the previous prompt and answer: more tokens, and the
        previous turn's kept blocks are a leading part of its own."""
        t = reqs.turns
        assert t is not None
        later = np.flatnonzero(t.after >= 0)
        prev = t.after[later]
        assert later.size > 0.8 * len(reqs)
        assert (t.conv[later] == t.conv[prev]).all()
        assert (reqs.prompt[later] >= reqs.prompt[prev] + reqs.output[prev]).all()
        assert (t.blocks[later] >= t.kept[prev]).all()
        assert (t.kept >= t.blocks).all()
        assert (t.think[later] > 0).all()
        assert np.isnan(reqs.arrival[later]).all()
        assert np.isfinite(reqs.arrival[t.after < 0]).all()
        per_session = np.bincount(t.conv)
        assert per_session.min() >= 5
        assert per_session.max() <= 15

    def test_groups_share_their_system_prompt_blocks(self, reqs: Requests) -> None:
        """Conversations of one group share at least the shortest system prompt's blocks,
        of different groups nothing; once two conversations part they share no block again."""
        assert reqs.turns is not None
        chains = reqs.turns.chains
        assert len({c[0] for c in chains}) == Agents().groups
        for a, b in itertools.combinations(chains[:60], 2):
            run = leading(a, b)
            assert run >= Agents().system_tokens[0] // BLOCK_TOKENS if a[0] == b[0] else run == 0
            assert not set(a[run:]) & set(b)


class TestClairvoyant:
    """The reference router: exact TTFT, least of its candidates', one request at a time."""

    @pytest.mark.parametrize(
        "setup", [_agentic(0.05, 2), dataclasses.replace(_hetero(0.85, 1500), seed=2)]
    )
    def test_every_request_gets_the_ttft_it_was_picked_for(self, setup: Setup) -> None:
        """The TTFT the clairvoyant computed for its pick (the least over the engines with
        room, from their queues, caches and the requests' output lengths) is the TTFT each
        request gets, with prompt caches and without."""
        sim = Simulation(setup, CLAIRVOYANT, setup.draw())
        outcome = sim.run()
        predicted = sim.replicas[0].predicted  # type: ignore[attr-defined]
        rids = np.array(sorted(predicted))
        assert rids.size == len(outcome.requests)
        expected = np.array([predicted[r] for r in rids])
        assert np.allclose(outcome.ttft[rids], expected, rtol=1e-9, atol=1e-9)


class TestAgenticScenarios:
    """The agentic scenarios' figures: cache hit shares, and the orderings they show."""

    def test_prefix_awareness_shows(self) -> None:
        """Keeping a conversation where its prefix is cached raises the hit share far above
        round robin's and cuts median TTFT; the clairvoyant has the lowest p99."""
        policies = (CLAIRVOYANT, "least_loaded", "round_robin", "prefix_affinity")
        res = agentic(0.05, 1, policies)["policies"]
        share = {p: res[p]["cache_hit_share"] for p in policies}
        assert share["prefix_affinity"] > share["least_loaded"] > share["round_robin"] > 0.3
        assert share[CLAIRVOYANT] > share["least_loaded"]
        assert res["prefix_affinity"]["ttft_p50_s"] < 0.5 * res["round_robin"]["ttft_p50_s"]
        assert res[CLAIRVOYANT]["ttft_p99_s"] == min(r["ttft_p99_s"] for r in res.values())

    def test_replicas_report_hit_share_against_one_router(self) -> None:
        """Behind 4 replicas with 1 s-old maps, each policy's hit share is reported beside
        its share behind one router."""
        report = agentic_replicas(0.05, 1, ("least_loaded", "prefix_affinity"))
        checks, res = report["checks"], report["policies"]
        for p in ("least_loaded", "prefix_affinity"):
            ratio = res[p]["cache_hit_share"] / res[f"{p}/1-router"]["cache_hit_share"]
            assert checks[f"{p}_hit_share_4_over_1"] == pytest.approx(ratio, abs=1e-3)
        assert res["least_loaded"]["busy_answers"] > 0
        assert "pass" in checks
