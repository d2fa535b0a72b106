"""The answer reader on Anthropic Messages and OpenAI Responses answers, as llama-server and
vLLM send them (and as the agent writes them when it translates): streams whole, line by line
and cut anywhere, and whole bodies."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.events import AnswerReader, Surface, surface_of
from tests.node_protocol.test_events import Case, expected, outcome, read_stream


def events(*pairs: tuple[str, bytes]) -> bytes:
    """SSE with named events: ``event: NAME`` then ``data: JSON``."""
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), data) for name, data in pairs)


def text_delta(text: bytes) -> tuple[str, bytes]:
    return (
        "content_block_delta",
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
        + text
        + b'"}}',
    )


LLAMA_MESSAGE_START = (
    "message_start",
    b'{"type":"message_start","message":{"id":"chatcmpl-Wd0g","type":"message","role":'
    b'"assistant","content":[],"model":"tiny","stop_reason":null,"stop_sequence":null,"usage":'
    b'{"cache_read_input_tokens":9,"input_tokens":20,"output_tokens":0}}}',
)
TEXT_BLOCK_START = (
    "content_block_start",
    b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
)
BLOCK_STOP = ("content_block_stop", b'{"type":"content_block_stop","index":0}')
MESSAGE_STOP = ("message_stop", b'{"type":"message_stop"}')


def message_delta(reason: bytes, usage: bytes) -> tuple[str, bytes]:
    return (
        "message_delta",
        b'{"type":"message_delta","delta":{"stop_reason":"'
        + reason
        + b'","stop_sequence":null},"usage":'
        + usage
        + b"}",
    )


def responses_event(kind: str, rest: bytes) -> tuple[str, bytes]:
    return kind, b'{"type":"' + kind.encode() + b'",' + rest + b"}"


RESPONSE_DONE = (
    b'"response":{"id":"resp_g","object":"response","created_at":1796237587,"status":"%s",'
    b'"model":"tiny","output":[{"type":"message","status":"completed","id":"msg_R6","content":'
    b'[{"type":"output_text","annotations":[],"logprobs":[],"text":"heute"}],"role":"assistant"}],'
    b'"usage":{"input_tokens":24,"output_tokens":3,"total_tokens":27,"input_tokens_details":'
    b'{"cached_tokens":23}}%s}'
)

STREAMS: dict[str, Case] = {
    "llama-server messages, prompt split by the cache": Case(
        Surface.ANTHROPIC,
        events(
            LLAMA_MESSAGE_START,
            TEXT_BLOCK_START,
            text_delta(b"z"),
            text_delta(b" c"),
            BLOCK_STOP,
            message_delta(b"max_tokens", b'{"output_tokens":2}'),
            MESSAGE_STOP,
        ),
        tokens=2,
        usage=2,
        prompt=29,
        cached=9,
        reason="max_tokens",
    ),
    "messages tool use and thinking are output": Case(
        Surface.ANTHROPIC,
        events(
            ("message_start", b'{"type":"message_start","message":{"usage":{"input_tokens":7}}}'),
            (
                "content_block_delta",
                b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
                b'"thinking":"hmm"}}',
            ),
            (
                "content_block_start",
                b'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
                b'"id":"toolu_1","name":"get_weather","input":{}}}',
            ),
            (
                "content_block_delta",
                b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
                b'"partial_json":"{\\"city\\": \\"Paris\\"}"}}',
            ),
            (
                "content_block_delta",
                b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
                b'"partial_json":""}}',
            ),
            message_delta(b"tool_use", b'{"input_tokens":7,"output_tokens":12}'),
            MESSAGE_STOP,
        ),
        tokens=2,
        usage=12,
        prompt=7,
        reason="tool_use",
    ),
    "messages stream without message_stop": Case(
        Surface.ANTHROPIC,
        events(LLAMA_MESSAGE_START, TEXT_BLOCK_START, text_delta(b"z")),
        tokens=1,
        prompt=29,
        cached=9,
        finished=False,
    ),
    "messages error event": Case(
        Surface.ANTHROPIC,
        events(
            LLAMA_MESSAGE_START,
            text_delta(b"z"),
            ("error", b'{"type":"error","error":{"type":"api_error","message":"cut short"}}'),
        ),
        tokens=1,
        prompt=29,
        cached=9,
        finished=False,
        error="cut short",
    ),
    "llama-server responses stream": Case(
        Surface.RESPONSES,
        events(
            responses_event(
                "response.created",
                b'"response":{"id":"resp_g","object":"response","status":"in_progress"}',
            ),
            responses_event(
                "response.output_item.added",
                b'"item":{"content":[],"id":"msg_R6","role":"assistant","status":"in_progress",'
                b'"type":"message"}',
            ),
            responses_event("response.output_text.delta", b'"item_id":"msg_R6","delta":"he"'),
            responses_event("response.output_text.delta", b'"item_id":"msg_R6","delta":"u"'),
            responses_event("response.output_text.delta", b'"item_id":"msg_R6","delta":"te"'),
            responses_event("response.output_text.done", b'"item_id":"msg_R6","text":"heute"'),
            responses_event("response.completed", RESPONSE_DONE % (b"completed", b"")),
        ),
        tokens=3,
        usage=3,
        prompt=24,
        cached=23,
        reason="completed",
    ),
    "responses function call arguments, incomplete at the output cap": Case(
        Surface.RESPONSES,
        events(
            responses_event(
                "response.function_call_arguments.delta",
                b'"item_id":"fc_1","output_index":0,"delta":"{\\"city\\"","sequence_number":3',
            ),
            responses_event(
                "response.function_call_arguments.delta",
                b'"item_id":"fc_1","output_index":0,"delta":": 1}","sequence_number":4',
            ),
            responses_event(
                "response.incomplete",
                RESPONSE_DONE
                % (b"incomplete", b',"incomplete_details":{"reason":"max_output_tokens"}'),
            ),
        ),
        tokens=2,
        usage=3,
        prompt=24,
        cached=23,
        reason="max_output_tokens",
    ),
    "responses error event": Case(
        Surface.RESPONSES,
        events(
            responses_event("response.output_text.delta", b'"item_id":"m","delta":"he"'),
            responses_event("error", b'"code":"stream_cut","message":"node gone","param":null'),
        ),
        tokens=1,
        finished=False,
        error="node gone",
    ),
    "responses failed": Case(
        Surface.RESPONSES,
        events(
            responses_event(
                "response.failed",
                b'"response":{"id":"r","object":"response","status":"failed","error":'
                b'{"code":"server_error","message":"engine died"}}',
            )
        ),
        tokens=0,
        finished=False,
        error="engine died",
    ),
    "responses stream without its end": Case(
        Surface.RESPONSES,
        events(responses_event("response.output_text.delta", b'"item_id":"m","delta":"he"')),
        tokens=1,
        finished=False,
    ),
}

BODIES: dict[str, Case] = {
    "llama-server message": Case(
        Surface.ANTHROPIC,
        b'{"id":"chatcmpl-CI","type":"message","role":"assistant","content":[{"type":"text",'
        b'"text":" aofattuti nnd"}],"model":"tiny","stop_reason":"max_tokens","stop_sequence":null,'
        b'"usage":{"cache_read_input_tokens":27,"input_tokens":1,"output_tokens":8}}',
        tokens=0,
        usage=8,
        prompt=28,
        cached=27,
        reason="max_tokens",
    ),
    "anthropic error envelope": Case(
        Surface.ANTHROPIC,
        b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field '
        b'required"}}',
        tokens=0,
        finished=False,
        error="max_tokens: Field required",
    ),
    "llama-server response": Case(
        Surface.RESPONSES,
        b'{"completed_at":1796237953,"created_at":1796237953,"id":"resp_Nap","model":"tiny",'
        b'"object":"response","output":[{"content":[{"type":"output_text","annotations":[],'
        b'"logprobs":[],"text":"vin"}],"id":"msg_tU","role":"assistant","status":"completed",'
        b'"type":"message"}],"status":"completed","usage":{"input_tokens":29,"output_tokens":2,'
        b'"total_tokens":31,"input_tokens_details":{"cached_tokens":28}}}',
        tokens=0,
        usage=2,
        prompt=29,
        cached=28,
        reason="completed",
    ),
    "failed response": Case(
        Surface.RESPONSES,
        b'{"id":"resp_1","object":"response","status":"failed","error":{"code":"server_error",'
        b'"message":"engine died"},"output":[]}',
        tokens=0,
        finished=False,
        error="engine died",
    ),
}


class TestStreams:
    @pytest.mark.parametrize("name", STREAMS)
    def test_stream_read_whole_and_line_by_line(self, name: str) -> None:
        """A stream read as one piece or a line at a time gives its pieces, counts, end and
        error."""
        case = STREAMS[name]
        assert outcome(read_stream(case, [case.data])) == expected(case)
        lines = case.data.splitlines(keepends=True)
        assert outcome(read_stream(case, lines)) == expected(case)

    @settings(max_examples=40, deadline=None)
    @given(data=st.data())
    @pytest.mark.parametrize("name", STREAMS)
    def test_any_split_reads_the_same(self, name: str, data: st.DataObject) -> None:
        """However the stream is cut into pieces, it reads the same."""
        case = STREAMS[name]
        cuts = data.draw(st.lists(st.integers(0, len(case.data)), max_size=12), label="cuts")
        bounds = [0, *sorted(cuts), len(case.data)]
        pieces = [case.data[a:b] for a, b in itertools.pairwise(bounds)]
        assert outcome(read_stream(case, pieces)) == expected(case)

    def test_first_token_is_the_first_delta(self) -> None:
        """message_start and content_block_start are not tokens: the first delta is."""
        case = STREAMS["llama-server messages, prompt split by the cache"]
        pieces = [e + b"\n\n" for e in case.data.split(b"\n\n") if e]
        reader = read_stream(case, pieces)
        assert (reader.t_first_token, reader.t_last_token) == (2.0, 3.0)


class TestBodies:
    @pytest.mark.parametrize("name", BODIES)
    def test_body(self, name: str) -> None:
        """A whole message or response reads its exact counts, its reason and its error."""
        case = BODIES[name]
        reader = AnswerReader(case.surface)
        reader.read_body(case.data, 5.0)
        assert outcome(reader) == expected(case)


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/v1/messages", Surface.ANTHROPIC),
        ("/v1/responses", Surface.RESPONSES),
        ("/v1/messages/count_tokens", Surface.NONE),
    ],
)
def test_surface_of_path(path: str, surface: Surface) -> None:
    """The Messages and Responses paths map to their surfaces."""
    assert surface_of(path) is surface
