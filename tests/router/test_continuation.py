"""The request that continues a cut answer, per surface, and the splice of its stream into the
client's: pure functions over bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from node_protocol.events import Surface
from router.continuation import Sent, continuation, read_sent
from router.splice import Splicer

USER = [{"role": "user", "content": "hi"}]


def _continued(surface: Surface, request: dict[str, Any], text: str, sent: int) -> Any:
    found = continuation(surface, orjson.dumps(request), text, sent)
    return None if found is None else orjson.loads(found.body)


class TestContinuation:
    def test_chat_continues_the_assistant_turn_with_the_cap_lowered(self) -> None:
        """Chat: the text so far is the start of the assistant's turn, both caps lowered by
        what was sent, and the engines told to continue it rather than start a new turn."""
        request = {"model": "m", "messages": USER, "max_tokens": 50, "max_completion_tokens": 40}
        body = _continued(Surface.CHAT, request, "Hello", 2)
        assert body["messages"] == [*USER, {"role": "assistant", "content": "Hello"}]
        assert (body["max_tokens"], body["max_completion_tokens"]) == (48, 38)
        assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)

    def test_a_clients_own_final_assistant_message_is_extended(self) -> None:
        """A client that prefilled the assistant's turn: the text joins its message."""
        messages = [*USER, {"role": "assistant", "content": "Sure: "}]
        body = _continued(Surface.CHAT, {"messages": messages}, "one", 1)
        assert body["messages"][-1] == {"role": "assistant", "content": "Sure: one"}
        assert len(body["messages"]) == 2

    @pytest.mark.parametrize(
        "extra",
        [
            {"n": 2},
            {"max_tokens": 2},
            {"response_format": {"type": "json_schema", "json_schema": {}}},
        ],
    )
    def test_chat_that_cannot_be_continued(self, extra: dict[str, Any]) -> None:
        """Several choices, a cap already reached, or structured output: no continuation."""
        assert _continued(Surface.CHAT, {"messages": USER, **extra}, "Hello", 2) is None

    def test_completions_continue_the_prompt(self) -> None:
        """Completions: the prompt grows by the text so far (one prompt, in a list or not)."""
        body = _continued(Surface.COMPLETIONS, {"prompt": ["Once"], "max_tokens": 9}, " upon", 1)
        assert (body["prompt"], body["max_tokens"]) == ("Once upon", 8)
        assert _continued(Surface.COMPLETIONS, {"prompt": "a", "echo": True}, "b", 1) is None

    def test_ollama_chat_and_raw_generate(self) -> None:
        """Ollama: chat continues a final assistant message with num_predict lowered (an
        uncapped -1 stays); generate only a raw prompt (any other is templated)."""
        chat = {"messages": USER, "options": {"num_predict": 10, "temperature": 0}}
        body = _continued(Surface.OLLAMA_CHAT, chat, "Hi", 3)
        assert body["messages"][-1] == {"role": "assistant", "content": "Hi"}
        assert body["options"] == {"num_predict": 7, "temperature": 0}
        uncapped = _continued(Surface.OLLAMA_CHAT, {**chat, "options": {"num_predict": -1}}, "a", 3)
        assert uncapped["options"] == {"num_predict": -1}
        raw = _continued(Surface.OLLAMA_GENERATE, {"prompt": "[INST]x", "raw": True}, " y", 1)
        assert raw["prompt"] == "[INST]x y"
        assert _continued(Surface.OLLAMA_GENERATE, {"prompt": "x"}, " y", 1) is None

    def test_a_surface_with_no_continuation(self) -> None:
        """Triton's generate routes are not continued."""
        assert _continued(Surface.TRITON, {"text_input": "x"}, "y", 1) is None


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _delta(content: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"id": "b", "created": 2, "choices": [{"index": 0, "delta": delta}]}


class TestSent:
    def test_text_id_and_what_else_was_shown(self) -> None:
        """The text of the content deltas, the stream's first id; a tool call is more than
        text; the agent's cut event is not the answer's."""
        stream = _sse({**_delta("", role="assistant"), "id": "a", "created": 1}) + _sse(
            _delta("Hel")
        )
        stream += _sse(_delta("lo")) + b'data: {"error":{"code":"backend_stream_cut"}}\n\n'
        sent = Sent()
        read_sent(Surface.CHAT, stream, sent)
        assert (sent.text, sent.only_text, sent.stream_id, sent.created) == ("Hello", True, "a", 1)
        read_sent(Surface.CHAT, _sse(_delta(None, tool_calls=[{"index": 0}])), sent)
        assert not sent.only_text

    def test_ollama_lines(self) -> None:
        sent = Sent()
        lines = b'{"message":{"role":"assistant","content":"a"},"done":false}\n'
        lines += b'{"message":{"role":"assistant","content":"b"},"done":false}\n'
        read_sent(Surface.OLLAMA_CHAT, lines, sent)
        assert (sent.text, sent.only_text) == ("ab", True)


class TestSplicer:
    def test_one_id_no_second_role_and_usage_for_the_whole_answer(self) -> None:
        """The continuation's opening role chunk is dropped, a role beside text removed, ids
        and creation time are the stream's, and its usage counts the carried tokens as output,
        not prompt; [DONE] passes as it is."""
        splicer = Splicer(Surface.CHAT, "a", 1, carried=3)
        usage = {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15}
        stream = _sse(_delta("", role="assistant")) + _sse(_delta("x", role="assistant"))
        stream += _sse({"id": "b", "choices": [], "usage": usage}) + b"data: [DONE]\n\n"
        out = splicer.feed(stream)
        events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
        assert events[-1] == b"[DONE]"
        parsed = [orjson.loads(e) for e in events[:-1]]
        assert parsed[0] == {
            "id": "a",
            "created": 1,
            "choices": [{"index": 0, "delta": {"content": "x"}}],
        }
        assert parsed[1]["usage"] == {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
        }
        assert len(parsed) == 2

    def test_only_whole_events_go_out(self) -> None:
        """An event split across pieces goes out once it is whole, CRLF or not."""
        splicer = Splicer(Surface.CHAT, "a", None, carried=0)
        event = _sse(_delta("x")).replace(b"\n", b"\r\n")
        assert splicer.feed(event[:10]) == b""
        assert orjson.loads(splicer.feed(event[10:])[6:])["choices"][0]["delta"] == {"content": "x"}

    def test_ollama_final_counts(self) -> None:
        splicer = Splicer(Surface.OLLAMA_CHAT, None, None, carried=4)
        out = splicer.feed(b'{"done":true,"eval_count":6,"prompt_eval_count":20}\n')
        assert orjson.loads(out) == {"done": True, "eval_count": 10, "prompt_eval_count": 16}
