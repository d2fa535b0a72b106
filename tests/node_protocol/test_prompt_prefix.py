"""The prompt fingerprint: shared prefixes share leading blocks, on every surface, whatever the
body's JSON formatting; and how much of a prompt a set of held hashes covers."""

from __future__ import annotations

import itertools
import json
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.prompt_prefix import (
    _LADDER,
    BLOCK_CHARS,
    Fingerprint,
    cached_prefix_chars,
    fingerprint,
    fingerprint_text,
    is_prompt_path,
    ladder,
    on_ladder,
    prompt_text,
    recorded_hashes,
)

ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
TEXT = st.text(st.characters(codec="utf-8"), max_size=700)
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": TEXT})
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages, **extra}


def block_end(position: int, fp: Fingerprint) -> int:
    return min((position + 1) * BLOCK_CHARS, fp.chars)


class TestPrefixes:
    """Shared leading text means shared leading blocks, and nothing else does."""

    @given(MESSAGES, MESSAGES)
    @settings(max_examples=200, deadline=None)
    def test_an_extended_conversation_keeps_the_shorter_ones_full_blocks(
        self, first: list[dict[str, Any]], more: list[dict[str, Any]]
    ) -> None:
        """A conversation extended by more messages keeps every leading block hash of the
        shorter one, except possibly its last, partial block."""
        short = fingerprint(chat(first))
        longer = fingerprint(chat(first + more))
        full = short.chars // BLOCK_CHARS
        assert longer.blocks[:full] == short.blocks[:full]

    @given(MESSAGES, MESSAGES)
    @settings(max_examples=200, deadline=None)
    def test_a_block_hash_is_shared_exactly_when_the_text_up_to_its_end_is(
        self, one: list[dict[str, Any]], two: list[dict[str, Any]]
    ) -> None:
        """Block i of two prompts is equal if and only if their texts agree up to its end."""
        text_a, text_b = prompt_text(chat(one)), prompt_text(chat(two))
        a, b = fingerprint_text(text_a), fingerprint_text(text_b)
        for i in range(min(len(a.blocks), len(b.blocks))):
            same_text = text_a[: block_end(i, a)] == text_b[: block_end(i, b)]
            assert (a.blocks[i] == b.blocks[i]) == same_text

    @given(TEXT, TEXT, MESSAGES)
    @settings(max_examples=100, deadline=None)
    def test_different_system_prompts_share_no_block(
        self, system_a: str, system_b: str, rest: list[dict[str, Any]]
    ) -> None:
        """Two system prompts that differ in their first block give chains with no hash in
        common at any position."""
        if system_a[:200] == system_b[:200]:
            system_b = "x" + system_b
        a = fingerprint(chat([{"role": "system", "content": system_a}, *rest]))
        b = fingerprint(chat([{"role": "system", "content": system_b}, *rest]))
        assert not set(a.blocks) & set(b.blocks)

    def test_tools_change_every_block(self) -> None:
        """The tools come first, so other tools change the whole chain."""
        messages = [{"role": "user", "content": "q" * 3000}]
        tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
        other = {"type": "function", "function": {"name": "g", "parameters": {}}}
        a = fingerprint(chat(messages, tools=[tool]))
        b = fingerprint(chat(messages, tools=[other]))
        assert not set(a.blocks) & set(b.blocks)

    def test_a_long_first_message_is_cut_into_blocks(self) -> None:
        """Blocks are cut over the whole prompt, not one hash of the first message."""
        fp = fingerprint(chat([{"role": "system", "content": "s" * 5000}]))
        assert len(fp.blocks) == -(-fp.chars // BLOCK_CHARS) == 10


class TestParsedValues:
    """The fingerprint is of the parsed values: the body's formatting never matters."""

    @given(MESSAGES, st.sampled_from([None, 1, 2, 4]), st.booleans())
    @settings(max_examples=100, deadline=None)
    def test_json_formatting_does_not_matter(
        self, messages: list[dict[str, Any]], indent: int | None, ascii_only: bool
    ) -> None:
        """Indentation, spacing and escaping of the body give the same fingerprint."""
        body = chat(messages, tools=[{"type": "function", "function": {"name": "f"}}])
        compact = orjson.loads(orjson.dumps(body))
        spaced = orjson.loads(json.dumps(body, indent=indent, ensure_ascii=ascii_only))
        assert fingerprint(spaced) == fingerprint(compact)

    @given(JSON)
    @settings(max_examples=300, deadline=None)
    def test_any_json_in_any_field_is_fingerprinted_without_error(self, value: Any) -> None:
        """Whatever JSON a client puts in the prompt fields, the fingerprint is computed."""
        body = {
            "messages": [value, {"role": "user", "content": value, "tool_calls": value}],
            "tools": value,
            "system": value,
            "input": value,
            "prompt": value,
        }
        fp = fingerprint(body)
        assert fp.chars == len(prompt_text(body))

    def test_a_value_too_deep_to_write_is_fingerprinted(self) -> None:
        """A tool list nested deeper than JSON can be written back still gets a fingerprint."""
        deep = orjson.loads("[" * 1000 + "]" * 1000)
        fp = fingerprint(chat([{"role": "user", "content": "hi"}], tools=deep))
        assert fp.blocks


class TestSurfaces:
    """The same conversation on every surface that carries it gives the same blocks."""

    SYSTEM = "You are a coding agent. " * 40
    TURNS: ClassVar[list[dict[str, str]]] = [
        {"role": "user", "content": "List the files."},
        {"role": "assistant", "content": "a.py b.py"},
        {"role": "user", "content": "Open a.py"},
    ]

    def openai(self) -> Fingerprint:
        return fingerprint(chat([{"role": "system", "content": self.SYSTEM}, *self.TURNS]))

    def test_ollama_chat_matches_openai_chat(self) -> None:
        """Ollama's /api/chat with the same messages gives the OpenAI chat's blocks."""
        body = {
            "model": "llama3.1:8b",
            "messages": [{"role": "system", "content": self.SYSTEM}, *self.TURNS],
            "stream": True,
            "options": {"num_ctx": 8192},
        }
        assert fingerprint(body) == self.openai()

    def test_anthropic_system_field_matches_a_system_message(self) -> None:
        """Anthropic's top-level system (a string or text blocks) is the first message."""
        as_text = {"model": "c", "max_tokens": 9, "system": self.SYSTEM, "messages": self.TURNS}
        blocks = [{"type": "text", "text": self.SYSTEM, "cache_control": {"type": "ephemeral"}}]
        as_blocks = {**as_text, "system": blocks}
        assert fingerprint(as_text) == fingerprint(as_blocks) == self.openai()

    def test_text_parts_match_string_content(self) -> None:
        """A content list of text parts reads as its texts joined."""
        parted = [
            {"role": t["role"], "content": [{"type": "text", "text": t["content"]}]}
            for t in self.TURNS
        ]
        body = chat([{"role": "system", "content": self.SYSTEM}, *parted])
        assert fingerprint(body) == self.openai()

    def test_responses_instructions_and_input_match_chat(self) -> None:
        """OpenAI responses: instructions as the system message, input items as messages."""
        items = [
            {"type": "message", "role": t["role"], "content": [{"type": "input_text", "text": c}]}
            for t in self.TURNS
            for c in (t["content"],)
        ]
        body = {"model": "m", "instructions": self.SYSTEM, "input": items}
        assert fingerprint(body) == self.openai()

    def test_responses_string_input_is_a_user_message(self) -> None:
        """A string ``input`` is one user message."""
        body = {"model": "m", "instructions": self.SYSTEM, "input": "hello"}
        expected = chat(
            [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": "hello"}]
        )
        assert fingerprint(body) == fingerprint(expected)

    @pytest.mark.parametrize(
        ("body", "other"),
        [
            ({"prompt": "p" * 2000}, {"model": "m", "prompt": ["p" * 2000]}),
            ({"text_input": "p" * 2000, "parameters": {"max_tokens": 4}}, {"inputs": "p" * 2000}),
        ],
    )
    def test_raw_prompts_agree_across_surfaces(
        self, body: dict[str, Any], other: dict[str, Any]
    ) -> None:
        """Completions, Triton's text_input and TGI's inputs fingerprint a raw text alike."""
        assert fingerprint(body) == fingerprint(other)

    def test_ollama_generate_system_comes_first(self) -> None:
        """/api/generate: its system prompt leads, so a shared one shares leading blocks."""
        a = fingerprint({"model": "m", "system": self.SYSTEM, "prompt": "one"})
        b = fingerprint({"model": "m", "system": self.SYSTEM, "prompt": "two"})
        shared = len(self.SYSTEM) // BLOCK_CHARS
        assert a.blocks[:shared] == b.blocks[:shared]
        assert a.blocks[-1] != b.blocks[-1]

    def test_a_body_without_a_prompt_has_no_blocks(self) -> None:
        """No prompt field: an empty fingerprint."""
        assert fingerprint({"model": "m"}) == Fingerprint((), 0)

    @pytest.mark.parametrize(
        ("path", "carries"),
        [
            ("/v1/chat/completions", True),
            ("/v1/completions?x=1", True),
            ("/api/chat", True),
            ("/api/generate", True),
            ("/v2/models/m/generate_stream", True),
            ("/generate", True),
            ("/v1/messages", True),
            ("/v1/responses", True),
            ("/infer", True),
            ("/v1/embeddings", False),
            ("/api/embed", False),
            ("/v2/models/m/infer", False),
            ("/v1/models", False),
        ],
    )
    def test_prompt_paths(self, path: str, carries: bool) -> None:
        """Only the routes that send a prompt to a generating engine are fingerprinted."""
        assert is_prompt_path(path) is carries


class TestLadder:
    """The sparse positions a held set records."""

    def test_ladder_is_every_position_on_it_in_order(self) -> None:
        """The precomputed ladder holds exactly the positions on_ladder accepts."""
        assert ladder(5000) == tuple(p for p in range(5000) if on_ladder(p))
        assert list(_LADDER) == sorted(_LADDER)

    def test_ladder_points_are_never_more_than_an_eighth_apart(self) -> None:
        """Between two points, one block or at most an eighth of the prefix up to the later one."""
        points = ladder(100_000)
        assert points[:15] == tuple(range(15))
        for before, after in itertools.pairwise(points):
            assert after - before <= max(1, (after + 1) / 8)


class TestCachedPrefixChars:
    """How much of a prompt a held set covers."""

    SYSTEM = "You are a planner. " * 300  # 5,700 characters

    def prompt(self, question: str) -> Fingerprint:
        return fingerprint(
            chat(
                [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": question}]
            )
        )

    def test_the_same_prompt_is_covered_whole(self) -> None:
        """A set holding a prompt covers all of it again."""
        fp = self.prompt("why?")
        assert cached_prefix_chars(set(recorded_hashes(fp)), fp) == fp.chars

    def test_a_shared_system_prompt_is_covered_to_its_last_full_block(self) -> None:
        """Another question after the same system prompt: covered up to the shared blocks."""
        held = set(recorded_hashes(self.prompt("why?")))
        other = self.prompt("how?")
        covered = cached_prefix_chars(held, other)
        assert covered % BLOCK_CHARS == 0
        assert len(self.SYSTEM) - BLOCK_CHARS < covered <= len(self.SYSTEM)

    def test_nothing_held_covers_nothing(self) -> None:
        """An empty set, or an empty prompt, covers no character."""
        fp = self.prompt("why?")
        assert cached_prefix_chars(set(), fp) == 0
        assert cached_prefix_chars(set(recorded_hashes(fp)), Fingerprint((), 0)) == 0

    def test_coverage_stops_at_the_first_missing_point(self) -> None:
        """A lost leading block means no prefix is held, whatever follows it."""
        fp = self.prompt("why?")
        held = set(recorded_hashes(fp)) - {fp.blocks[0]} - {fp.blocks[-1]}
        assert cached_prefix_chars(held, fp) == 0

    @given(st.integers(min_value=1, max_value=400), st.integers(min_value=0, max_value=400))
    @settings(max_examples=200, deadline=None)
    def test_coverage_of_an_extension_is_within_an_eighth(self, short: int, extra: int) -> None:
        """A longer prompt over a held shorter one is covered to within an eighth (and one
        block) of what they share, never beyond it."""
        text = "".join(chr(0x41 + (i * 7) % 26) for i in range((short + extra) * BLOCK_CHARS))
        held_fp = fingerprint_text(text[: short * BLOCK_CHARS - 1])
        asked = fingerprint_text(text)
        covered = cached_prefix_chars(set(recorded_hashes(held_fp)), asked)
        shared = (short - 1) * BLOCK_CHARS  # the held prompt's full blocks
        assert covered <= shared
        assert covered >= shared * 7 / 8 - BLOCK_CHARS
