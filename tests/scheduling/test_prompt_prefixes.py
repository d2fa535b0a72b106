"""The prefill term: learned prefill rates, each node's uncached prompt, what a router routed
since a report, and the rendezvous order replicas agree on."""

from __future__ import annotations

import random

import numpy as np
import pytest

from node_protocol.prompt_prefix import SCHEME, fingerprint_text
from node_protocol.wire import LoadReport, ModelReport, PrefixSummary, Registration
from router.candidates import node_hashes
from router.prefill_rates import (
    MAX_CHARS_PER_S,
    MIN_SAMPLE_CHARS,
    default_rate,
    learned_rate,
)
from router.prompt_prefixes import Rendezvous, cached_chars, chars_per_s, learn, note_routed
from router.registry import Registry
from router.roster import CandidateRules, Roster
from router.scheduling import Scheduler

PROMPT = fingerprint_text("x" * 20_000)
OTHER = fingerprint_text("y" * 20_000)


def _nodes(n: int, kind: str = "vllm") -> tuple[Registry, list]:  # type: ignore[type-arg]
    registry = Registry("least_loaded", 3)
    nodes = []
    for i in range(n):
        node, _ = registry.register("g", Registration(f"n{i}", "http://x"), 0.0)
        report = LoadReport(1, 0.0, kind, "ok", 0, models=(ModelReport("m", True, max_parallel=4),))
        registry.apply_report(node, report, 0.0)
        nodes.append(node)
    return registry, nodes


def _summary(*held: str) -> PrefixSummary:
    hashes: set[int] = set()
    for text in held:
        hashes.update(fingerprint_text(text).blocks)
    return PrefixSummary("m", SCHEME, frozenset(hashes), 1 << 20, 1 << 16)


def test_rate_starts_at_the_kinds_default_and_moves_toward_samples() -> None:
    """Until a node taught one, its kind's default stands; each sample moves it part way."""
    assert default_rate("vllm") > default_rate("llamacpp")
    assert learned_rate(None, 100, 1.0) is None  # too short a prompt to tell
    assert learned_rate(None, 10_000, 0.0) is None
    first = learned_rate(None, 10_000, 1.0)
    assert first == 10_000.0
    second = learned_rate(first, 20_000, 1.0)
    assert second is not None
    assert 10_000.0 < second < 20_000.0
    assert learned_rate(None, MIN_SAMPLE_CHARS, 1e-12) == MAX_CHARS_PER_S


def _roster(nodes: list) -> Roster:  # type: ignore[type-arg]
    return Roster(nodes, ("m",), CandidateRules(3, 3.0, cap_factor=2.0))


def _report(seq: int, *held: str) -> LoadReport:
    return LoadReport(seq, 0.0, "vllm", "ok", 0, models=(ModelReport("m", True, max_parallel=4),),
                      prefix_caches=(_summary(*held),))  # fmt: skip


def test_a_node_with_the_prefix_cached_prefills_less() -> None:
    """The node whose summary holds the prompt has no uncached part; the others all of it."""
    registry, nodes = _nodes(3)
    roster = _roster(nodes)
    registry.apply_report(nodes[1], _report(2, "x" * 20_000), 0.0)
    terms = roster.prompt_terms(PROMPT)
    assert terms is not None
    assert [terms.held(i) for i in range(3)] == [0, PROMPT.chars, 0]
    assert terms.prefill_s[1] == 0.0
    assert terms.prefill_s[0] == terms.prefill_s[2] == PROMPT.chars / chars_per_s(nodes[0])


def test_a_prefix_every_node_holds_counts_for_every_node() -> None:
    """A leading part every node's summary holds is cached everywhere; the node holding more
    of the prompt prefills only the rest."""
    registry, nodes = _nodes(3)
    roster = _roster(nodes)
    shared = "s" * 4_096
    for i, node in enumerate(nodes):
        registry.apply_report(node, _report(2, shared + ("x" * 16_000 if i == 2 else str(i))), 0.0)
    prompt = fingerprint_text(shared + "x" * 16_000 + "next turn")
    terms = roster.prompt_terms(prompt)
    assert terms is not None
    assert terms.held(0) == terms.held(1) == 4_096  # the shared part, no more
    assert terms.held(2) > 16_000
    assert [terms.held(i) for i in range(3)] == [cached_chars(node, "m", prompt) for node in nodes]


def test_no_cache_signal_means_no_term() -> None:
    """Without any node's summary or routed prompts the ranking stays as without the term."""
    _, nodes = _nodes(3)
    assert _roster(nodes).prompt_terms(PROMPT) is None


def test_the_index_follows_routed_prompts_reports_and_rates() -> None:
    """A roster's index, made before, sees a prompt routed since, a report replacing it and a
    rate learned: each as asking the nodes afresh would."""
    registry, nodes = _nodes(2)
    roster = _roster(nodes)
    assert roster.prompt_terms(PROMPT) is None
    note_routed(nodes[0], "m", PROMPT)
    terms = roster.prompt_terms(PROMPT)
    assert terms is not None
    assert [terms.held(i) for i in range(2)] == [PROMPT.chars, 0]
    learn(nodes[1], 30_000, 2.0)
    terms = roster.prompt_terms(PROMPT)
    assert terms is not None
    assert terms.prefill_s[1] == pytest.approx(PROMPT.chars / 15_000.0, rel=1e-12)
    registry.apply_report(nodes[0], _report(2, "y" * 20_000), 1.0)
    terms = roster.prompt_terms(PROMPT)
    assert terms is not None
    assert [terms.held(i) for i in range(2)] == [0, 0]
    other = roster.prompt_terms(OTHER)
    assert other is not None
    assert other.held(0) == OTHER.chars


def test_rendezvous_weights_agree_one_by_one_and_at_once() -> None:
    """A node's weight is the same from the Python path (a few rows) and the numpy one."""
    hashes = node_hashes([f"n{i}" for i in range(50)])
    rendezvous = Rendezvous.of(PROMPT)
    at_once = rendezvous.weights(hashes)
    assert at_once.tolist() == [rendezvous.weight(h) for h in hashes.tolist()]
    assert np.all((at_once >= 0.0) & (at_once < 1.0))


def test_routed_prompts_count_until_the_next_report() -> None:
    """What this router sent to a node counts as held there until a report replaces it."""
    registry, nodes = _nodes(2)
    note_routed(nodes[0], "m", PROMPT)
    assert cached_chars(nodes[0], "m", PROMPT) == PROMPT.chars
    assert cached_chars(nodes[0], "m", OTHER) == 0
    assert cached_chars(nodes[1], "m", PROMPT) is None
    report = LoadReport(2, 0.0, "vllm", "ok", 0, models=(ModelReport("m", True, max_parallel=4),),
                        prefix_caches=(_summary("y" * 20_000),))  # fmt: skip
    registry.apply_report(nodes[0], report, 1.0)
    assert cached_chars(nodes[0], "m", PROMPT) == 0
    assert cached_chars(nodes[0], "m", OTHER) == OTHER.chars


def test_learning_replaces_the_default() -> None:
    """A node that answered teaches its own rate."""
    _, nodes = _nodes(1)
    learn(nodes[0], 30_000, 2.0)
    assert chars_per_s(nodes[0]) == 15_000.0


def test_replicas_pick_the_same_node_for_a_new_prompt() -> None:
    """On an idle fleet, routers with different random draws pick the same node for a prompt
    (its rendezvous order), and not the same node for every prompt: over a few nodes (kept
    scores) and over a fleet (columns)."""
    for n in (8, 120):
        _, nodes = _nodes(n)
        roster = _roster(nodes)
        nodes[0].routed_prefixes = {"m": set()}  # a cache signal, holding nothing
        picks = set()
        for text in ("a", "b", "c", "d", "e", "f"):
            terms = roster.prompt_terms(fingerprint_text(text * 5_000))
            assert terms is not None
            chosen = {
                roster.decide(Scheduler(random.Random(seed)), "least_loaded", "g/m", 1.0,
                              limit=1, prefill_s=terms.prefill_s, ties=terms.ties)[0]  # type: ignore[index]
                for seed in range(6)
            }  # fmt: skip
            assert len(chosen) == 1
            picks |= chosen
        assert len(picks) > 1


def test_a_node_that_taught_no_rate_stands_in_with_its_peers_rate() -> None:
    """A node that has taught no prefill rate yet is taken to read as fast as its peers of the
    same kind taught, not at the kind's default: one lesson does not set a node apart."""
    _, nodes = _nodes(3)
    roster = _roster(nodes)
    note_routed(nodes[2], "m", OTHER)  # a cache signal
    learn(nodes[0], 30_000, 2.0)
    learn(nodes[1], 50_000, 2.0)
    terms = roster.prompt_terms(PROMPT)
    assert terms is not None
    assert terms.prefill_s[2] == pytest.approx(PROMPT.chars / 20_000.0, rel=1e-12)
    _, fresh = _nodes(1)
    assert chars_per_s(fresh[0]) == default_rate("vllm")


def test_a_node_holding_more_of_the_prompt_comes_first_among_alike_scores() -> None:
    """Where holding the prompt saves less than the alike margin, the node holding it still
    comes first, over a few nodes (kept scores) and over a fleet (columns)."""
    for n in (8, 120):
        _, nodes = _nodes(n)
        roster = _roster(nodes)
        for node in nodes:
            learn(node, 2 * PROMPT.chars, 1e-6)  # so fast a prefill that it saves next to nothing
        weights = Rendezvous.of(PROMPT).weights(roster.hashes())
        holder = int(np.argmax(weights))  # last in the prompt's rendezvous order
        note_routed(nodes[holder], "m", PROMPT)
        terms = roster.prompt_terms(PROMPT)
        assert terms is not None
        for seed in range(4):
            picked = roster.decide(Scheduler(random.Random(seed)), "least_loaded", "g/m", 1.0,
                                   limit=1, prefill_s=terms.prefill_s, ties=terms.ties)  # fmt: skip
            assert picked == [holder]


def test_with_no_cache_signal_picks_equal_the_blind_policys() -> None:
    """No node reported a summary and nothing was routed: a request with a prompt is ranked
    exactly as one without, draws included, over a few nodes and over a fleet."""
    for n in (8, 120):
        _, nodes = _nodes(n)
        roster = _roster(nodes)
        for i in range(0, n, 3):
            roster.counted(i, "m", 1)  # some load, so that not every score is alike
        for seed, text in enumerate("abcdef"):
            terms = roster.prompt_terms(fingerprint_text(text * 5_000))
            assert terms is None
            blind = roster.decide(Scheduler(random.Random(seed)), "least_loaded", "g/m", 1.0,
                                  limit=3)  # fmt: skip
            weighed = roster.decide(Scheduler(random.Random(seed)), "least_loaded", "g/m", 1.0,
                                    limit=3, prefill_s=None, ties=None)  # fmt: skip
            assert weighed == blind
