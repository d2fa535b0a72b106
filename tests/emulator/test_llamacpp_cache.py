"""The llama.cpp face's slot choice and prompt cache, rule by rule (no HTTP)."""

from __future__ import annotations

from bench.emulator import EmulatorConfig
from bench.emulator.engine import Engine
from bench.emulator.job import Job
from bench.emulator.llamacpp_cache import PromptCache, SlotTable, common_prefix
from bench.emulator.llamacpp_prompt import prompt_tokens, tokens_after

from .conftest import fast_config


def _job(engine: Engine, prompt: tuple[str, ...]) -> Job:
    return engine.admit(engine.config.models[0], len(prompt), 4)


def _config() -> EmulatorConfig:
    return fast_config("llamacpp", models=("llama3.1:8b",), slots=2)


def test_common_prefix_counts_equal_leading_tokens() -> None:
    """The shared prefix stops at the first different token."""
    assert common_prefix(("a", "b", "c"), ("a", "b", "x", "y")) == 2
    assert common_prefix(("a", "b"), ("a", "b", "c")) == 2
    assert common_prefix((), ("a",)) == 0


def test_a_request_goes_to_the_slot_holding_the_most_similar_prompt() -> None:
    """Of two idle slots, the one whose tokens share most of the prompt is chosen."""
    table = SlotTable(2, 4096)
    engine = Engine(_config())
    long_a = prompt_tokens("alpha " * 50)
    long_b = prompt_tokens("bravo " * 50)
    table.slots[0].tokens, table.slots[1].tokens = long_a, long_b
    job = _job(engine, long_b)
    slot = table.assign(job, (*long_b, "more"), reuse=True)
    assert slot.id == 1
    assert job.cached_tokens == len(long_b)


def test_an_identical_prompt_recomputes_its_last_token() -> None:
    """A fully cached prompt still computes one token (its last)."""
    table = SlotTable(1, 4096)
    prompt = prompt_tokens("same words again " * 20)
    table.slots[0].tokens = prompt
    job = _job(Engine(_config()), prompt)
    table.assign(job, prompt, reuse=True)
    assert job.cached_tokens == len(prompt) - 1


def test_without_a_similar_slot_the_least_recently_used_one_is_taken() -> None:
    """Below the similarity threshold the slot used longest ago wins."""
    table = SlotTable(2, 4096)
    engine = Engine(_config())
    table.slots[0].tokens, table.slots[0].last_used = prompt_tokens("x" * 400), 5.0
    table.slots[1].tokens, table.slots[1].last_used = prompt_tokens("y" * 400), 3.0
    prompt = prompt_tokens("z" * 400)
    slot = table.assign(_job(engine, prompt), prompt, reuse=True)
    assert slot.id == 1


def test_a_replaced_prompt_is_saved_and_loaded_back_for_its_next_turn() -> None:
    """A slot's prompt that an unrelated request replaces goes to the RAM cache, and the next
    request that continues it is served from there, in whatever slot it lands."""
    table = SlotTable(1, 4096)
    engine = Engine(_config())
    first = prompt_tokens("conversation one " * 30)
    job = _job(engine, first)
    slot = table.assign(job, first, reuse=True)
    table.release(slot, tokens_after(first, "conversation one " * 30, 0))
    other = prompt_tokens("something else entirely " * 30)
    table.release(table.assign(_job(engine, other), other, reuse=True), other)
    follow_up = prompt_tokens("conversation one " * 30 + "and more")
    job = _job(engine, follow_up)
    table.assign(job, follow_up, reuse=True)
    assert job.cached_tokens >= len(first) - 1


def test_no_reuse_computes_everything_and_leaves_the_ram_cache_alone() -> None:
    """``cache_prompt: false`` and embeddings reuse nothing and save nothing."""
    table = SlotTable(2, 4096)
    prompt = prompt_tokens("p" * 400)
    table.slots[0].tokens = prompt
    job = _job(Engine(_config()), prompt)
    table.assign(job, prompt, reuse=False)
    assert job.cached_tokens == 0
    assert table.cache.entries == []


def test_the_ram_cache_drops_contained_and_oldest_prompts() -> None:
    """A prompt that extends a saved one replaces it; over the bound, the oldest goes."""
    cache = PromptCache(limit_tokens=10)
    cache.save(("a", "b"))
    cache.save(("a", "b", "c"))
    assert cache.entries == [("a", "b", "c")]
    cache.save(("a",))  # already contained
    assert cache.entries == [("a", "b", "c")]
    cache.save(tuple("defghij"))
    assert cache.entries == [("a", "b", "c"), tuple("defghij")]
    cache.save(("k", "l"))
    assert cache.entries == [tuple("defghij"), ("k", "l")]


def test_the_ram_cache_gives_a_prompt_only_if_it_beats_the_slot() -> None:
    """A saved prompt is loaded when it keeps and serves more than the slot's own tokens."""
    cache = PromptCache(limit_tokens=100)
    saved = tuple("abcdefgh")
    cache.save(saved)
    assert cache.take_better(tuple("abcdefgx"), (*tuple("abcdefgh"), "z")) == saved
    assert cache.entries == []
    cache.save(saved)
    assert cache.take_better(tuple("abcdefgh"), tuple("abcdefgh")) is None
