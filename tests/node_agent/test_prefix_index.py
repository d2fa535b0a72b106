"""The agent's estimate of its node's prompt caches: bounded like the engine's, least recently
used first out, tail before head, corrected by what the engine says it reused."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.prefix_index import MIN_SCALE, SHRINK, PrefixIndex
from node_agent.prompt_caches import (
    CHARS_PER_TOKEN,
    DEFAULT_TOKENS,
    MAX_MODELS,
    PromptCaches,
    estimate_chars,
)
from node_protocol.prompt_prefix import BLOCK_CHARS, SCHEME, Fingerprint, fingerprint_text
from node_protocol.wire import ModelReport

CHAT = "/v1/chat/completions"


def text(seed: int, chars: int) -> str:
    """A prompt text of its own: no two seeds share a first block."""
    head = f"conversation {seed}: "
    return (head + "lorem ipsum dolor " * (chars // 18 + 1))[:chars]


def body(system: str, question: str, model: str = "m") -> bytes:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return orjson.dumps({"model": model, "messages": messages})


class TestBounds:
    """The index never holds more than its capacity."""

    @given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 20_000)), max_size=40))
    @settings(max_examples=100, deadline=None)
    def test_used_chars_never_pass_capacity(self, prompts: list[tuple[int, int]]) -> None:
        """Whatever prompts arrive, the characters held stay within the capacity and add up."""
        index = PrefixIndex(30_000)
        for seed, chars in prompts:
            index.record(fingerprint_text(text(seed, chars)))
            assert index.used_chars <= index.capacity_chars
        assert index.used_chars == sum(index._entries.values())

    def test_a_prompt_is_held_whole_after_it_arrives(self) -> None:
        """Recorded, a prompt is held to its last character."""
        index = PrefixIndex(100_000)
        fp = fingerprint_text(text(1, 9_000))
        assert index.held_chars(fp) == 0
        index.record(fp)
        assert index.held_chars(fp) == fp.chars


class TestEviction:
    """Least recently used out first; a prefix loses its tail before its head."""

    def test_least_recently_used_prompt_goes_first(self) -> None:
        """Past capacity, the prompt used longest ago is evicted, a reused one kept."""
        index = PrefixIndex(3 * 9_000)  # three of the four prompts
        old, reused, new = (fingerprint_text(text(i, 9_000)) for i in range(3))
        index.record(old)
        index.record(reused)
        index.record(fingerprint_text(text(9, 9_000)))
        index.record(reused)  # touched again: now the most recent
        index.record(new)
        assert index.held_chars(old) == 0
        assert index.held_chars(reused) == reused.chars
        assert index.held_chars(new) == new.chars

    def test_a_prefix_loses_its_tail_before_its_head(self) -> None:
        """A prompt bigger than the cache keeps its leading part, as an engine would."""
        index = PrefixIndex(8_000)
        fp = fingerprint_text(text(1, 20_000))
        index.record(fp)
        held = index.held_chars(fp)
        assert 0 < held <= 8_000
        assert held >= 8_000 * 7 / 8 - BLOCK_CHARS

    def test_resize_to_a_smaller_estimate_evicts(self) -> None:
        """A smaller reported capacity evicts down to it at once."""
        index = PrefixIndex(100_000)
        for i in range(8):
            index.record(fingerprint_text(text(i, 10_000)))
        index.resize(20_000)
        assert index.used_chars <= 20_000


class TestCorrection:
    """The engine's own cached-token counts correct the estimate."""

    def test_engine_holding_far_less_shrinks_the_index(self) -> None:
        """Predicted a whole prompt held, the engine reused none: capacity shrinks and the
        least recent prefixes go."""
        index = PrefixIndex(100_000)
        prompts = [fingerprint_text(text(i, 10_000)) for i in range(9)]
        for fp in prompts:
            index.record(fp)
        index.correct(predicted_chars=10_000, engine_chars=0)
        assert index.capacity_chars == int(100_000 * SHRINK)
        assert index.used_chars <= index.capacity_chars
        assert index.held_chars(prompts[0]) == 0
        assert index.held_chars(prompts[-1]) == prompts[-1].chars

    def test_repeated_misses_stop_at_the_floor(self) -> None:
        """However often the engine disagrees, the capacity keeps a floor."""
        index = PrefixIndex(100_000)
        for _ in range(100):
            index.correct(predicted_chars=10_000, engine_chars=0)
        assert index.capacity_chars == int(100_000 * MIN_SCALE)

    def test_engine_holding_far_more_grows_the_index_back(self) -> None:
        """The engine reused what the index had let go: the capacity grows again."""
        index = PrefixIndex(100_000)
        index.correct(predicted_chars=10_000, engine_chars=0)
        shrunk = index.capacity_chars
        index.correct(predicted_chars=0, engine_chars=10_000)
        assert index.capacity_chars > shrunk

    def test_a_match_within_tolerance_changes_nothing(self) -> None:
        """Off by less than a block (token rounding, templates): the estimate stands."""
        index = PrefixIndex(100_000)
        index.correct(predicted_chars=10_000, engine_chars=10_000 - BLOCK_CHARS + 1)
        index.correct(predicted_chars=1_000, engine_chars=1_000 + BLOCK_CHARS)
        assert index.capacity_chars == 100_000


class TestPromptCaches:
    """One index per model, named as the backend names it, sized from its report."""

    SYSTEM = "You are an agent with tools. " * 100

    def test_arrival_estimates_the_cached_share(self) -> None:
        """A second question after the same system prompt arrives mostly on a cached prefix."""
        caches = PromptCaches()
        first = caches.arrive(CHAT, body(self.SYSTEM, "one"))
        second = caches.arrive(CHAT, body(self.SYSTEM, "two"))
        assert first is not None
        assert second is not None
        assert first.predicted_chars == 0
        assert len(self.SYSTEM) - BLOCK_CHARS < second.predicted_chars <= len(self.SYSTEM)
        (cache,) = caches.models().values()
        assert cache.prompt_chars == first.fingerprint.chars + second.fingerprint.chars
        assert cache.cached_chars == second.predicted_chars

    def test_aliases_share_their_models_index(self) -> None:
        """A request naming an alias lands on the model's own index."""
        caches = PromptCaches()
        caches.configure(
            (
                ModelReport(id="llama-3.1-8b", loaded=True, aliases=("llama",)),
                ModelReport(id="sql-lora", loaded=True),
            ),
            None,
        )
        caches.arrive(CHAT, body(self.SYSTEM, "one", model="llama"))
        caches.arrive(CHAT, body(self.SYSTEM, "two", model="llama-3.1-8b"))
        assert list(caches.models()) == ["llama-3.1-8b"]

    def test_a_one_model_backend_takes_any_name(self) -> None:
        """On a backend reporting one model, every name (or none) is that model."""
        caches = PromptCaches()
        caches.configure((ModelReport(id="tiny", loaded=True),), None)
        caches.arrive(CHAT, body(self.SYSTEM, "one", model="gpt-4o"))
        caches.arrive("/generate", orjson.dumps({"inputs": "hello"}))
        assert list(caches.models()) == ["tiny"]

    def test_a_route_that_names_the_model_wins(self) -> None:
        """Triton's generate names its model in the path; its body has none."""
        caches = PromptCaches()
        generate = orjson.dumps({"text_input": self.SYSTEM, "parameters": {"max_tokens": 4}})
        caches.arrive("/v2/models/ensemble/generate", generate, route_model="ensemble")
        assert list(caches.models()) == ["ensemble"]

    def test_models_are_bounded(self) -> None:
        """At most MAX_MODELS indexes; the least recently used model goes."""
        caches = PromptCaches()
        for i in range(MAX_MODELS + 5):
            caches.arrive(CHAT, body(self.SYSTEM, "q", model=f"m{i}"))
        names = list(caches.models())
        assert len(names) == MAX_MODELS
        assert "m0" not in names
        assert f"m{MAX_MODELS + 4}" in names

    def test_no_prompt_no_arrival(self) -> None:
        """Embeddings, listings, bodies that are not JSON objects are not recorded."""
        caches = PromptCaches()
        assert caches.arrive("/v1/embeddings", orjson.dumps({"input": "x"})) is None
        assert caches.arrive(CHAT, b"not json") is None
        assert caches.arrive(CHAT, b"[1, 2]") is None
        assert caches.arrive(CHAT, orjson.dumps({"model": "m"})) is None
        assert caches.models() == {}

    def test_settle_keeps_the_engines_ratio_and_corrects(self) -> None:
        """The engine's counts feed its cached ratio and the index's correction."""
        caches = PromptCaches()
        caches.arrive(CHAT, body(self.SYSTEM, "one"))
        arrival = caches.arrive(CHAT, body(self.SYSTEM, "one"))
        assert arrival is not None
        arrival.settle(prompt_tokens=800, cached_tokens=0)  # the engine had dropped it all
        (cache,) = caches.models().values()
        assert cache.engine_cached_ratio == 0.0
        assert (cache.engine_prompt_tokens, cache.engine_cached_tokens) == (800, 0)
        assert cache.index.scale == SHRINK
        arrival.settle(prompt_tokens=None, cached_tokens=None)  # an engine that says nothing
        assert cache.engine_prompt_tokens == 800

    def test_summaries_hold_the_most_recent_hashes(self) -> None:
        """A model's summary lists at most ``limit`` hashes, its newest prompt's among them."""
        caches = PromptCaches()
        for i in range(50):
            caches.arrive(CHAT, body(text(i, 6_000), "q"))
        newest = caches.arrive(CHAT, body(self.SYSTEM, "q"))
        assert newest is not None
        (summary,) = caches.summaries(limit=40)
        assert summary.scheme == SCHEME
        assert len(summary.hashes) == 40
        assert summary.prefix_chars(newest.fingerprint) == newest.fingerprint.chars
        assert summary.used_chars <= summary.capacity_chars

    def test_a_reports_summaries_are_bounded_in_all(self) -> None:
        """Many models: the most recently used get their hashes first, within the total."""
        caches = PromptCaches()
        for i in range(10):
            caches.arrive(CHAT, body(text(i, 20_000), "q", model=f"m{i}"))
        found = caches.summaries(limit=20, total=70)  # each model holds 26 hashes
        assert [s.model for s in found] == ["m9", "m8", "m7", "m6"]
        assert [len(s.hashes) for s in found] == [20, 20, 20, 10]


class TestEstimates:
    """The cache's size from what the backend reports."""

    def test_kv_capacity_wins(self) -> None:
        """vLLM's KV blocks times block size, when reported."""
        model = ModelReport(id="m", loaded=True, max_parallel=4, context_length=8192)
        assert estimate_chars(model, 2048 * 16) == 2048 * 16 * CHARS_PER_TOKEN

    def test_context_times_slots_otherwise(self) -> None:
        """Else each slot's context times the slots (llama.cpp)."""
        model = ModelReport(id="m", loaded=True, max_parallel=4, context_length=8192)
        assert estimate_chars(model, None) == 4 * 8192 * CHARS_PER_TOKEN

    def test_a_default_when_nothing_is_known(self) -> None:
        """Nothing reported: the default."""
        assert estimate_chars(ModelReport(id="m", loaded=True), None) == (
            DEFAULT_TOKENS * CHARS_PER_TOKEN
        )

    def test_configure_resizes_existing_indexes(self) -> None:
        """A report with the model's capacity resizes its index."""
        caches = PromptCaches()
        caches.arrive(CHAT, body("s" * 40_000, "q", model="m"))
        caches.configure((ModelReport(id="m", loaded=True, context_length=2048),), None)
        (cache,) = caches.models().values()
        assert cache.index.capacity_chars == 2048 * CHARS_PER_TOKEN
        assert cache.index.used_chars <= 2048 * CHARS_PER_TOKEN


def test_fingerprint_type_is_shared() -> None:
    """The index takes the protocol's fingerprints as they are."""
    assert PrefixIndex(10_000).held_chars(Fingerprint((), 0)) == 0
