"""Reading a relayed answer must cost at most 5 us per event.

The router reads every chunk it relays (:meth:`RequestRecord.watch`, which feeds
:class:`node_protocol.events.AnswerReader`): a typical chunk holds one event, a backlog can hold
many. Run with the other micro-benchmarks::

    pytest bench/micro --benchmark-warmup=on --benchmark-disable-gc --benchmark-min-rounds=20 \\
        --benchmark-json=results/micro.json
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bench.micro import within_budget
from node_protocol.events import AnswerReader, Surface
from router.records import RequestRecord

BUDGET_PER_EVENT_S = 5e-6
MANY = 64  # events in one large chunk


def chat_event(piece: str) -> bytes:
    """One vLLM chat chunk as it is sent."""
    chunk = {
        "id": "chatcmpl-8c2f0e7d9a1b4c3e",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "choices": [
            {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def ollama_line(piece: str) -> bytes:
    line = {"model": "llama3.1:8b", "created_at": "2026-01-01T00:00:00.123456Z",
            "message": {"role": "assistant", "content": piece}, "done": False}  # fmt: skip
    return orjson.dumps(line) + b"\n"


def check(benchmark: Any, events: int) -> None:
    within_budget(benchmark, events * BUDGET_PER_EVENT_S)


class TestAnswerReader:
    """The per-chunk cost of reading an answer on the relay's path."""

    def test_record_watch_one_event(self, benchmark: Any) -> None:
        """The router's call per relayed chunk, on a chunk of one chat event."""
        record = RequestRecord("g", "m", "/v1/chat/completions", None, "c")
        event = chat_event(" world")
        benchmark(record.watch, event, 1.0)
        assert record.tokens > 0
        check(benchmark, 1)

    def test_one_event(self, benchmark: Any) -> None:
        """The reader alone on a chunk of one chat event."""
        reader = AnswerReader(Surface.CHAT)
        benchmark(reader.feed, chat_event(" world"), 1.0)
        assert reader.tokens > 0
        check(benchmark, 1)

    def test_many_events_in_one_chunk(self, benchmark: Any) -> None:
        """A chunk of 64 chat events (a backlog the node sent at once)."""
        reader = AnswerReader(Surface.CHAT)
        chunk = b"".join(chat_event(f" w{n}") for n in range(MANY))
        benchmark(reader.feed, chunk, 1.0)
        assert reader.tokens % MANY == 0
        check(benchmark, MANY)

    @pytest.mark.parametrize("split", [False, True])
    def test_ollama_line(self, benchmark: Any, split: bool) -> None:
        """An Ollama NDJSON line in one piece, or cut in two pieces (the partial line waits)."""
        reader = AnswerReader(Surface.OLLAMA_CHAT)
        line = ollama_line(" world")
        half = len(line) // 2

        def feed() -> None:
            if split:
                reader.feed(line[:half], 1.0)
                reader.feed(line[half:], 1.0)
            else:
                reader.feed(line, 1.0)

        benchmark(feed)
        assert reader.tokens > 0
        check(benchmark, 1)
