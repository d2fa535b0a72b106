"""The answer reader against the bytes real engines send: every surface's streams and bodies,
any JSON whitespace, any split into pieces."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.events import MAX_LINE, AnswerReader, Surface, surface_of


@dataclass(frozen=True)
class Case:
    """An answer as an engine sends it, and what must be read from it."""

    surface: Surface
    data: bytes
    tokens: int
    usage: int | None = None
    prompt: int | None = None
    cached: int | None = None
    finished: bool = True
    reason: str | None = None
    error: str | None = None


def sse(*events: bytes, space: bool = True) -> bytes:
    lead = b"data: " if space else b"data:"
    return b"".join(lead + e + b"\n\n" for e in events)


def ndjson(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def vllm_chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'{"id":"chatcmpl-9f","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":'
        + delta
        + b',"logprobs":null,"finish_reason":'
        + finish
        + b"}]}"
    )


def python_chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    """As llama.cpp's Python server writes it: Python's json.dumps, a space after each colon."""
    return (
        b'{"id": "chatcmpl-3a", "object": "chat.completion.chunk", "created": 1700000000, '
        b'"model": "tiny", "choices": [{"index": 0, "delta": '
        + delta
        + b', "logprobs": null, "finish_reason": '
        + finish
        + b"}]}"
    )


def completion_chunk(text: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'{"id":"cmpl-7","object":"text_completion","created":1700000000,"model":"llama",'
        b'"choices":[{"index":0,"text":"'
        + text
        + b'","logprobs":null,"finish_reason":'
        + finish
        + b',"stop_reason":null}],"usage":null}'
    )


def ollama_line(field_: bytes, piece: bytes) -> bytes:
    return (
        b'{"model":"llama3.1:8b","created_at":"2026-01-01T00:00:00.1Z",'
        + field_
        + piece
        + b',"done":false}'
    )


def chat_line(piece: bytes) -> bytes:
    return ollama_line(b'"message":', b'{"role":"assistant","content":"' + piece + b'"}')


def generate_line(piece: bytes) -> bytes:
    return ollama_line(b'"response":', b'"' + piece + b'"')


def tgi_token(index: int, text: bytes, *, special: bool = False) -> bytes:
    flag = b"true" if special else b"false"
    return (
        b'{"index":%d,"token":{"id":%d,"text":"%s","logprob":-0.12,"special":%s},'
        b'"generated_text":null,"details":null}' % (index, 1000 + index, text, flag)
    )


def triton_event(text: bytes) -> bytes:
    return b'{"id":"42","model_name":"llama","model_version":"1","text_output":"' + text + b'"}'


DONE = b"data: [DONE]\n\n"
VLLM_USAGE = (
    b'{"id":"chatcmpl-9f","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[],"usage":{"prompt_tokens":12,'
    b'"total_tokens":15,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}'
)
LLAMA_SERVER_LAST = (
    b'{"choices":[],"created":1700000000,"id":"chatcmpl-ll","model":"tiny","system_fingerprint":'
    b'"b1-0c1e570","object":"chat.completion.chunk","usage":{"completion_tokens":2,'
    b'"prompt_tokens":20,"total_tokens":22},"timings":{"cache_n":16,"prompt_n":4,'
    b'"prompt_ms":3.1,"prompt_per_token_ms":0.77,"predicted_n":2,"predicted_ms":9.2}}'
)
TGI_CHAT = (
    b'{"object":"chat.completion.chunk","id":"","created":1700000000,"model":"tgi",'
    b'"system_fingerprint":"3.0.0-native","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"%s"},"logprobs":null,"finish_reason":%s}],"usage":null}'
)
OLLAMA_OPENAI = (
    b'{"id":"chatcmpl-12","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"llama3.1:8b","system_fingerprint":"fp_ollama","choices":[{"index":0,'
    b'"delta":%s,"finish_reason":%s}]}'
)

STREAMS: dict[str, Case] = {
    "vllm chat, usage with cached tokens": Case(
        Surface.CHAT,
        sse(
            vllm_chunk(b'{"role":"assistant","content":""}'),
            vllm_chunk(b'{"content":"Hel"}'),
            vllm_chunk(b'{"content":"lo"}'),
            vllm_chunk(b'{"content":" world"}'),
            vllm_chunk(b'{"content":""}', b'"stop"'),
            VLLM_USAGE,
        )
        + DONE,
        tokens=3,
        usage=3,
        prompt=12,
        cached=8,
        reason="stop",
    ),
    "llama.cpp python server, spaces after colons": Case(
        Surface.CHAT,
        sse(
            python_chunk(b'{"role": "assistant"}'),
            python_chunk(b'{"content": "Hel"}'),
            python_chunk(b'{"content": "lo"}'),
            python_chunk(b'{"content": " world"}'),
            python_chunk(b"{}", b'"stop"'),
        )
        + DONE,
        tokens=3,
        reason="stop",
    ),
    "llama.cpp server, timings with the cached prompt": Case(
        Surface.CHAT,
        sse(
            vllm_chunk(b'{"content":"Hi"}'),
            vllm_chunk(b'{"content":"!"}'),
            vllm_chunk(b"{}", b'"stop"'),
            LLAMA_SERVER_LAST,
        )
        + DONE,
        tokens=2,
        usage=2,
        prompt=20,
        cached=16,
        reason="stop",
    ),
    "tgi chat, no space after data:": Case(
        Surface.CHAT,
        sse(TGI_CHAT % (b"Hel", b"null"), TGI_CHAT % (b"lo", b"null"), space=False)
        + sse(TGI_CHAT % (b"", b'"stop"'), space=False)
        + b"data:[DONE]\n\n",
        tokens=2,
        reason="stop",
    ),
    "ollama openai chat, usage chunk": Case(
        Surface.CHAT,
        sse(
            OLLAMA_OPENAI % (b'{"role":"assistant","content":"Hel"}', b"null"),
            OLLAMA_OPENAI % (b'{"role":"assistant","content":"lo"}', b"null"),
            OLLAMA_OPENAI % (b"{}", b'"stop"'),
            b'{"id":"chatcmpl-12","object":"chat.completion.chunk","created":1700000000,'
            b'"model":"llama3.1:8b","choices":[],"usage":{"prompt_tokens":11,'
            b'"completion_tokens":2,"total_tokens":13}}',
        )
        + DONE,
        tokens=2,
        usage=2,
        prompt=11,
        reason="stop",
    ),
    "vllm tool-call deltas are output": Case(
        Surface.CHAT,
        sse(
            vllm_chunk(b'{"role":"assistant","content":null}'),
            vllm_chunk(
                b'{"tool_calls":[{"index":0,"id":"chatcmpl-tool-1","type":"function",'
                b'"function":{"name":"get_weather","arguments":""}}]}'
            ),
            vllm_chunk(b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": "}}]}'),
            vllm_chunk(b'{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]}'),
            vllm_chunk(b'{"content":null}', b'"tool_calls"'),
        )
        + DONE,
        tokens=3,
        reason="tool_calls",
    ),
    "reasoning deltas are output": Case(
        Surface.CHAT,
        sse(
            vllm_chunk(b'{"reasoning_content":"Let"}'),
            vllm_chunk(b'{"reasoning":" me think"}'),
            vllm_chunk(b'{"content":"Hi"}', b'"stop"'),
        )
        + DONE,
        tokens=3,
        reason="stop",
    ),
    "text that quotes json is one piece": Case(
        Surface.CHAT,
        sse(
            python_chunk(b'{"content": "say \\"content\\": \\"\\" and \\"text\\":\\""}'),
            python_chunk(b'{"content": ""}', b'"length"'),
        )
        + DONE,
        tokens=1,
        reason="length",
    ),
    "vllm completions": Case(
        Surface.COMPLETIONS,
        sse(
            completion_chunk(b" once"),
            completion_chunk(b" upon"),
            completion_chunk(b" a", b'"length"'),
            b'{"id":"cmpl-7","object":"text_completion","created":1700000000,"model":"llama",'
            b'"choices":[],"usage":{"prompt_tokens":4,"total_tokens":7,"completion_tokens":3}}',
        )
        + DONE,
        tokens=3,
        usage=3,
        prompt=4,
        reason="length",
    ),
    "python completions, spaces after colons": Case(
        Surface.COMPLETIONS,
        sse(
            b'{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, '
            b'"text": " once", "finish_reason": null}]}',
            b'{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, '
            b'"text": " upon", "finish_reason": "length"}]}',
        )
        + DONE,
        tokens=2,
        reason="length",
    ),
    "ollama native chat": Case(
        Surface.OLLAMA_CHAT,
        ndjson(
            chat_line(b"Hel"),
            chat_line(b"lo"),
            chat_line(b" world"),
            b'{"model":"llama3.1:8b","created_at":"2026-01-01T00:00:01Z","message":{"role":'
            b'"assistant","content":""},"done_reason":"stop","done":true,"total_duration":'
            b'4935886791,"load_duration":534986708,"prompt_eval_count":26,'
            b'"prompt_eval_duration":107345000,"eval_count":3,"eval_duration":4289432000}',
        ),
        tokens=3,
        usage=3,
        prompt=26,
        reason="stop",
    ),
    "ollama native generate, exact count wins": Case(
        Surface.OLLAMA_GENERATE,
        ndjson(
            generate_line(b"The"),
            generate_line(b" sky"),
            generate_line(b" is blue"),
            b'{"model":"llama3.1:8b","created_at":"2026-01-01T00:00:01Z","response":"",'
            b'"done":true,"done_reason":"length","context":[1,2,3,4,5,6,7],'
            b'"total_duration":10706818083,"prompt_eval_count":9,"eval_count":5}',
        ),
        tokens=3,
        usage=5,
        prompt=9,
        reason="length",
    ),
    "tgi generate_stream with details": Case(
        Surface.TGI,
        sse(
            tgi_token(1, b"Hel"),
            tgi_token(2, b"lo"),
            b'{"index":3,"token":{"id":2,"text":"","logprob":-0.2,"special":true},'
            b'"generated_text":"Hello","details":{"finish_reason":"eos_token",'
            b'"generated_tokens":3,"seed":null,"input_length":4}}',
            space=False,
        ),
        tokens=2,
        usage=3,
        prompt=4,
        reason="eos_token",
    ),
    "tgi generate_stream without details": Case(
        Surface.TGI,
        sse(
            tgi_token(1, b"Hel"),
            b'{"index":2,"token":{"id":9,"text":"lo","logprob":-0.2,"special":false},'
            b'"generated_text":"Hello","details":null}',
            space=False,
        ),
        tokens=2,
    ),
    "triton generate_stream ends with its body": Case(
        Surface.TRITON,
        sse(triton_event(b"Hel"), triton_event(b"lo"), triton_event(b" world")),
        tokens=3,
    ),
    "vllm error inside the stream": Case(
        Surface.CHAT,
        sse(
            vllm_chunk(b'{"content":"Hel"}'),
            b'{"error":{"message":"engine dead","type":"InternalServerError","param":null,'
            b'"code":500}}',
        )
        + DONE,
        tokens=1,
        finished=False,
        error="engine dead",
    ),
    "tgi error event": Case(
        Surface.TGI,
        sse(
            tgi_token(1, b"Hel"),
            b'{"error":"Request failed during generation: Server error: out of memory",'
            b'"error_type":"generation"}',
            space=False,
        ),
        tokens=1,
        finished=False,
        error="Request failed during generation: Server error: out of memory",
    ),
    "triton error event": Case(
        Surface.TRITON,
        sse(triton_event(b"Hel"), b'{"error":"model unloaded"}'),
        tokens=1,
        finished=False,
        error="model unloaded",
    ),
    "ollama error line": Case(
        Surface.OLLAMA_CHAT,
        ndjson(chat_line(b"Hel"), b'{"error":"an error was encountered while running the model"}'),
        tokens=1,
        finished=False,
        error="an error was encountered while running the model",
    ),
    "openai stream without [DONE]": Case(
        Surface.CHAT,
        sse(vllm_chunk(b'{"content":"Hel"}'), vllm_chunk(b'{"content":"lo"}')),
        tokens=2,
        finished=False,
    ),
    "openai [DONE] with no choice finished": Case(
        Surface.CHAT,
        sse(vllm_chunk(b'{"content":"Hel"}')) + DONE,
        tokens=1,
        finished=False,
    ),
    "ollama stream without done": Case(
        Surface.OLLAMA_GENERATE,
        ndjson(generate_line(b"The"), generate_line(b" sky")),
        tokens=2,
        finished=False,
    ),
    "crlf line ends, comments and other fields": Case(
        Surface.CHAT,
        b": ping\r\n\r\nevent: message\r\nid: 1\r\ndata: "
        + python_chunk(b'{"content": "a"}')
        + b"\r\n\r\nretry: 3000\r\ndata:"
        + vllm_chunk(b"{}", b'"stop"')
        + b"\r\n\r\ndata: [DONE]\r\n\r\n",
        tokens=1,
        reason="stop",
    ),
    "data over several lines": Case(
        Surface.CHAT,
        b'data: {"choices": [{"index": 0,\ndata:  "delta": {"content": "x"},\n'
        b'data: "finish_reason": "stop"}]}\n\n' + DONE,
        tokens=1,
        reason="stop",
    ),
    "two choices in one event": Case(
        Surface.CHAT,
        sse(
            b'{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null},'
            b'{"index":1,"delta":{"content":"b"},"finish_reason":"stop"}]}'
        )
        + DONE,
        tokens=2,
        reason="stop",
    ),
}

BODIES: dict[str, Case] = {
    "openai chat, pretty-printed": Case(
        Surface.CHAT,
        b'{\n  "id": "chatcmpl-1",\n  "object": "chat.completion",\n  "choices": [\n    {\n'
        b'      "index": 0,\n      "message": {\n        "role": "assistant",\n'
        b'        "content": "Hello"\n      },\n      "finish_reason": "stop"\n    }\n  ],\n'
        b'  "usage": {\n    "prompt_tokens": 5,\n    "completion_tokens": 7,\n'
        b'    "total_tokens": 12,\n    "prompt_tokens_details": {\n      "cached_tokens": 3\n'
        b"    }\n  }\n}\n",
        tokens=0,
        usage=7,
        prompt=5,
        cached=3,
        reason="stop",
    ),
    "llama.cpp chat with timings": Case(
        Surface.CHAT,
        b'{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant",'
        b'"content":"abcd"}}],"created":1700000000,"model":"tiny","object":"chat.completion",'
        b'"usage":{"completion_tokens":4,"prompt_tokens":30,"total_tokens":34},'
        b'"timings":{"cache_n":24,"prompt_n":6,"predicted_n":4}}',
        tokens=0,
        usage=4,
        prompt=30,
        cached=24,
        reason="length",
    ),
    "openai completions": Case(
        Surface.COMPLETIONS,
        b'{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": " once",'
        b' "finish_reason": "length"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1,'
        b' "total_tokens": 3}}',
        tokens=0,
        usage=1,
        prompt=2,
        reason="length",
    ),
    "ollama chat": Case(
        Surface.OLLAMA_CHAT,
        b'{"model":"llama3.1:8b","created_at":"2026-01-01T00:00:01Z","message":{"role":'
        b'"assistant","content":"Hello world"},"done_reason":"stop","done":true,'
        b'"prompt_eval_count":26,"eval_count":7}',
        tokens=0,
        usage=7,
        prompt=26,
        reason="stop",
    ),
    "ollama generate": Case(
        Surface.OLLAMA_GENERATE,
        b'{"model":"llama3.1:8b","response":"The sky","done":true,"context":[1,2],'
        b'"prompt_eval_count":9,"eval_count":2}',
        tokens=0,
        usage=2,
        prompt=9,
    ),
    "tgi generate with details": Case(
        Surface.TGI,
        b'{"generated_text":"Hello","details":{"finish_reason":"length","generated_tokens":3,'
        b'"seed":null,"prefill":[],"tokens":[{"id":1,"text":"Hel","logprob":-0.1,'
        b'"special":false}]}}',
        tokens=0,
        usage=3,
        reason="length",
    ),
    "tgi compatibility list": Case(Surface.TGI, b'[{"generated_text":"Hello"}]', tokens=0),
    "triton generate": Case(
        Surface.TRITON,
        b'{"model_name":"llama","model_version":"1","text_output":"Hello world",'
        b'"num_input_tokens":[11],"num_output_tokens":[2]}',
        tokens=0,
        usage=2,
        prompt=11,
    ),
    "openai error envelope": Case(
        Surface.CHAT,
        b'{"error": {"message": "model not found", "type": "invalid_request_error", '
        b'"param": "model", "code": "model_not_found"}}',
        tokens=0,
        finished=False,
        error="model not found",
    ),
}


def read_stream(case: Case, pieces: list[bytes]) -> AnswerReader:
    reader = AnswerReader(case.surface)
    for n, piece in enumerate(pieces):
        reader.feed(piece, float(n))
    reader.end(float(len(pieces)))
    return reader


def outcome(reader: AnswerReader) -> tuple[object, ...]:
    return (
        reader.tokens,
        reader.usage_tokens,
        reader.prompt_tokens,
        reader.cached_tokens,
        reader.finished,
        reader.finish_reason,
        reader.error,
    )


def expected(case: Case) -> tuple[object, ...]:
    return (
        case.tokens,
        case.usage,
        case.prompt,
        case.cached,
        case.finished,
        case.reason,
        case.error,
    )


class TestStreams:
    """Each engine's stream reads the same whole or one event a piece."""

    @pytest.mark.parametrize("name", STREAMS)
    def test_stream_read_whole(self, name: str) -> None:
        """A stream given as one piece reads its pieces, counts, end and error."""
        case = STREAMS[name]
        assert outcome(read_stream(case, [case.data])) == expected(case)

    @pytest.mark.parametrize("name", STREAMS)
    def test_stream_read_line_by_line(self, name: str) -> None:
        """A stream given a line at a time reads the same."""
        case = STREAMS[name]
        lines = case.data.splitlines(keepends=True)
        assert outcome(read_stream(case, lines)) == expected(case)

    @settings(max_examples=60, deadline=None)
    @given(data=st.data())
    @pytest.mark.parametrize("name", STREAMS)
    def test_any_split_reads_the_same(self, name: str, data: st.DataObject) -> None:
        """However a stream is cut into pieces (mid-line, mid-event, mid-CRLF), the counts, the
        end and the error read the same."""
        case = STREAMS[name]
        cuts = data.draw(st.lists(st.integers(0, len(case.data)), max_size=12), label="cuts")
        bounds = [0, *sorted(cuts), len(case.data)]
        pieces = [case.data[a:b] for a, b in itertools.pairwise(bounds)]
        reader = read_stream(case, pieces)
        assert outcome(reader) == expected(case)
        assert (reader.t_first_token is None) == (case.tokens == 0)

    def test_first_token_is_the_first_piece_of_output(self) -> None:
        """A role-only delta is not the first token; the last token is the last piece."""
        case = STREAMS["vllm chat, usage with cached tokens"]
        events = [e + b"\n\n" for e in case.data.split(b"\n\n") if e]
        reader = read_stream(case, events)
        assert (reader.t_first_token, reader.t_last_token) == (1.0, 3.0)

    def test_triton_finishes_only_with_its_body(self) -> None:
        """Triton's stream has no end marker: it is finished when its body ends, not before."""
        reader = AnswerReader(Surface.TRITON)
        reader.feed(sse(triton_event(b"Hel")), 1.0)
        assert not reader.finished
        reader.end(2.0)
        assert reader.finished

    def test_last_line_without_newline_is_read_at_the_end(self) -> None:
        """An NDJSON stream whose last line lacks its newline is still finished."""
        case = STREAMS["ollama native chat"]
        reader = AnswerReader(case.surface)
        reader.feed(case.data.rstrip(b"\n"), 1.0)
        assert not reader.finished
        reader.end(2.0)
        assert outcome(reader) == expected(case)

    def test_overlong_line_is_dropped_and_the_stream_read_on(self) -> None:
        """A line over the limit is not held in memory; the events after it still count."""
        case = STREAMS["llama.cpp python server, spaces after colons"]
        reader = AnswerReader(case.surface)
        junk = b"data: " + b"x" * (1024 * 1024)
        for _ in range(MAX_LINE // len(junk) + 2):
            reader.feed(junk, 0.0)
        reader.feed(b"\n\n", 0.0)
        reader.feed(case.data, 1.0)
        reader.end(2.0)
        assert outcome(reader) == expected(case)


class TestBodies:
    """Whole answers: only an exact count says how many tokens they hold."""

    @pytest.mark.parametrize("name", BODIES)
    def test_body(self, name: str) -> None:
        """A body reads its exact counts, its finish reason and its error."""
        case = BODIES[name]
        reader = AnswerReader(case.surface)
        reader.read_body(case.data, 5.0)
        assert outcome(reader) == expected(case)
        assert (reader.t_first_token, reader.t_last_token) == (5.0, 5.0)

    def test_garbage_body_reads_nothing(self) -> None:
        reader = AnswerReader(Surface.CHAT)
        reader.read_body(b"<html>bad gateway</html>", 1.0)
        assert outcome(reader) == (0, None, None, None, False, None, None)


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/v1/chat/completions", Surface.CHAT),
        ("/api/v0/chat/completions", Surface.CHAT),
        ("/infer", Surface.CHAT),
        ("/v1/completions", Surface.COMPLETIONS),
        ("/v1/completions?x=1", Surface.COMPLETIONS),
        ("/api/chat", Surface.OLLAMA_CHAT),
        ("/api/generate", Surface.OLLAMA_GENERATE),
        ("/generate", Surface.TGI),
        ("/generate_stream", Surface.TGI),
        ("/v2/generate_stream", Surface.TRITON),
        ("/v2/models/llama/versions/1/generate", Surface.TRITON),
        ("/v1/embeddings", Surface.NONE),
        ("/api/embed", Surface.NONE),
        ("/v2/infer", Surface.NONE),
        ("/v2/models/llama/infer", Surface.NONE),
    ],
)
def test_surface_of_path(path: str, surface: Surface) -> None:
    """The router's endpoint names and the agent's backend paths map to their surface."""
    assert surface_of(path) is surface
