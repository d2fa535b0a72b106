"""The two readings of an OpenAI event (decoded into its fields, or parsed as it came) agree."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.events import AnswerReader, Surface
from node_protocol.openai_events import DECODE, Unusual

# Mostly the usual types (the decoded reading takes those), sometimes not (it hands them over).
_text = st.one_of(st.none(), st.just(""), st.text(max_size=4), st.integers(-1, 3))
_count = st.one_of(st.integers(-2, 500), st.none(), st.just("7"), st.lists(st.integers(0, 9)))
_details = st.fixed_dictionaries({"cached_tokens": _count})
_counts = st.dictionaries(
    st.sampled_from(["completion_tokens", "prompt_tokens", "cache_n", "prompt_n"]), _count
) | st.fixed_dictionaries({"prompt_tokens_details": _details})
_keys = [
    "content",
    "reasoning_content",
    "reasoning",
    "refusal",
    "role",
    "tool_calls",
    "function_call",
]
_delta: st.SearchStrategy[dict[str, Any] | None] = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(
        st.sampled_from(_keys),
        st.one_of(_text, st.lists(st.just({"index": 0}), max_size=2), st.just({"name": "f"})),
        max_size=3,
    ),
)
_choice = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "index": st.integers(0, 2),
            "delta": _delta,
            "message": _delta,
            "text": _text,
            "finish_reason": st.one_of(st.none(), st.just("stop"), st.just(""), st.just(3)),
        },
    ),
    st.integers(-5, 5),
)
_event = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.one_of(st.lists(_choice, max_size=3), st.none(), st.just({})),
        "usage": st.one_of(_counts, st.none(), st.just(3)),
        "timings": st.one_of(_counts, st.none()),
        "error": st.one_of(st.none(), st.just(""), st.just("boom"), st.just({"message": "m"})),
        "model": st.just("m"),
    },
)


def _state(reader: AnswerReader) -> tuple[Any, ...]:
    return (
        reader.tokens,
        reader.finish_reason,
        reader.usage_tokens,
        reader.prompt_tokens,
        reader.cached_tokens,
        reader.error,
        reader.finished,
    )


def _read(events: list[bytes], *, decoded: bool) -> tuple[Any, ...]:
    reader = AnswerReader(Surface.CHAT)
    reader._typed = decoded  # the same stream, each reading
    for event in events:
        reader.feed(b"data: " + event + b"\n\n", 1.0)
    reader.feed(b"data: [DONE]\n\n", 2.0)
    return _state(reader)


def _read_body(body: bytes, *, decoded: bool) -> tuple[Any, ...]:
    reader = AnswerReader(Surface.CHAT)
    reader._typed = decoded  # the same body, each reading
    reader.read_body(body, 1.0)
    return _state(reader)


@settings(max_examples=400, deadline=None)
@given(st.lists(_event, min_size=1, max_size=4))
def test_decoded_and_parsed_readings_of_a_stream_agree(events: list[dict[str, Any]]) -> None:
    raw = [orjson.dumps(event) for event in events]
    assert _read(raw, decoded=True) == _read(raw, decoded=False)


@settings(max_examples=200, deadline=None)
@given(_event)
def test_decoded_and_parsed_readings_of_a_body_agree(event: dict[str, Any]) -> None:
    body = orjson.dumps(event)
    assert _read_body(body, decoded=True) == _read_body(body, decoded=False)


def test_usual_events_are_decoded_and_unusual_ones_handed_over() -> None:
    usual = b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
    assert DECODE(usual).choices is not None
    for unusual in (
        b'{"choices":[{"delta":{"content":3}}]}',
        b'{"choices":{"delta":{}}}',
        b'{"choices":[{"finish_reason":1}]}',
        b"[1]",
    ):
        try:
            DECODE(unusual)
        except Unusual:
            continue
        raise AssertionError(f"{unusual!r} was decoded")


def test_pieces_finish_and_counts_of_a_chat_stream() -> None:
    events = [
        b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        b'{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}',
        b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}',
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"completion_tokens":9,"prompt_tokens":20,'
        b'"prompt_tokens_details":{"cached_tokens":16}}}',
    ]
    for decoded in (True, False):
        tokens, reason, usage, prompt, cached, error, finished = _read(events, decoded=decoded)
        assert (tokens, reason, usage, prompt, cached) == (3, "stop", 9, 20, 16)
        assert error is None
        assert finished
