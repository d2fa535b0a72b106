"""SSE decoding and the stream tally that turns events into a request record."""

from __future__ import annotations

import orjson

from bench.records import EMPTY, NO_DONE, STREAM_ERROR, ClientRecord
from bench.sse import SseDecoder, StreamTally


def _chunk(content: str | None = None, usage: dict[str, int] | None = None) -> str:
    obj: dict[str, object] = {"choices": []}
    if content is not None:
        obj["choices"] = [{"index": 0, "delta": {"content": content}}]
    if usage is not None:
        obj["usage"] = usage
    return orjson.dumps(obj).decode()


def _record() -> ClientRecord:
    return ClientRecord(model="m", entry="e", max_tokens=3, wall_send=0.0, t_send=10.0)


class TestSseDecoder:
    """The decoder splits the body into events as SSE defines them."""

    def test_events_end_at_blank_lines_and_comments_are_skipped(self) -> None:
        """A blank line ends an event; ``:`` lines are comments; CRLF endings work."""
        body = b": keep-alive\r\n\r\ndata: one\r\n\r\ndata: two\n\ndata: [DONE]\n\n"
        assert SseDecoder().feed(body) == ["one", "two", "[DONE]"]

    def test_multi_line_data_is_joined(self) -> None:
        """Several ``data:`` lines of one event are joined with newlines."""
        assert SseDecoder().feed(b"data: a\ndata:b\nevent: x\n\n") == ["a\nb"]

    def test_partial_event_waits_for_its_end(self) -> None:
        """An event whose blank line has not arrived yields nothing yet."""
        decoder = SseDecoder()
        assert decoder.feed_line(b"data: x\n") is None
        assert decoder.feed_line(b"\n") == "x"


class TestStreamTally:
    """The tally reads tokens, usage, [DONE] and in-stream errors into the record."""

    def test_first_token_is_first_non_empty_content(self) -> None:
        """An empty role chunk is not a token; usage gives the counts."""
        rec = _record()
        tally = StreamTally(rec)
        tally.event(_chunk(""), 10.05)
        tally.event(_chunk(" a"), 10.1)
        tally.event(_chunk(" b"), 10.2)
        tally.event(_chunk(" c"), 10.3)
        tally.event(_chunk(usage={"prompt_tokens": 4, "completion_tokens": 3}), 10.31)
        tally.event("[DONE]", 10.32)
        tally.finish(10.33)
        assert rec.error is None
        assert rec.t_first_event == 10.05
        assert rec.t_first_token == 10.1
        assert rec.t_last_token == 10.3
        assert (rec.completion_tokens, rec.prompt_tokens, rec.tokens_from) == (3, 4, "usage")
        assert rec.token_times == [0.1, 0.2, 0.3]

    def test_reasoning_and_completions_text_count_as_tokens(self) -> None:
        """``reasoning_content`` and the completions API's ``text`` are tokens too."""
        rec = _record()
        tally = StreamTally(rec)
        tally.event('{"choices":[{"delta":{"reasoning_content":"hm"}}]}', 10.1)
        tally.event('{"choices":[{"text":"x"}]}', 10.2)
        tally.event("[DONE]", 10.3)
        tally.finish(10.3)
        assert rec.token_times == [0.1, 0.2]
        assert rec.tokens_from == "chunks"
        assert rec.tokens == 2

    def test_stream_without_done_is_an_error(self) -> None:
        """A stream that stops before ``[DONE]`` is classed ``no_done``."""
        rec = _record()
        tally = StreamTally(rec)
        tally.event(_chunk(" a"), 10.1)
        tally.finish(10.2)
        assert rec.error == NO_DONE

    def test_empty_stream_is_an_error(self) -> None:
        """``[DONE]`` with no token is classed ``empty``."""
        rec = _record()
        tally = StreamTally(rec)
        tally.event("[DONE]", 10.1)
        tally.finish(10.1)
        assert rec.error == EMPTY

    def test_error_object_inside_the_stream(self) -> None:
        """An ``error`` object sent as an event marks the record, whatever follows."""
        rec = _record()
        tally = StreamTally(rec)
        tally.event(_chunk(" a"), 10.1)
        tally.event('{"error": {"message": "cut", "code": "stream_interrupted"}}', 10.2)
        tally.event("[DONE]", 10.3)
        tally.finish(10.3)
        assert rec.error == STREAM_ERROR
        assert rec.detail is not None
        assert "cut" in rec.detail
