"""The failover policy, row by row: which outcome retries, which answers, which counts against a
node; how node error bodies read; which error the client gets when no node is left."""

from __future__ import annotations

import orjson
import pytest

from node_protocol.events import AnswerReader, Surface
from router.errors import NoCapacity, RateLimited, UpstreamError, UpstreamTimeout
from router.failover import (
    ANSWERED,
    AT_END,
    Blame,
    Broken,
    Decision,
    ErrorAnswer,
    Failure,
    Garbage,
    Mark,
    Next,
    NoFirstToken,
    Outcome,
    Overloaded,
    Settle,
    TimedOut,
    Unreachable,
    decide,
    error_outcome,
    final_error,
    retry_after_s,
    retry_label,
)
from router.stream_relay import improper_end


def _error(status: int, blame: Blame, message: str = "boom") -> ErrorAnswer:
    return ErrorAnswer(status, blame, message, b"", "application/json", f"n answered {status}")


UNCLEAR = _error(500, Blame.UNCLEAR)
OTHER_UNCLEAR = _error(500, Blame.UNCLEAR, "something else")

RETRY_BREAKER = Decision(Next.RETRY, Mark.BREAKER, Settle.KEEP)
ANSWER = Decision(Next.ANSWER, Mark.NONE, Settle.REQUEST)

POLICY = [
    # (outcome, this request's earlier unclear 500s, decision)
    (ANSWERED, (), Decision(Next.RELAY, Mark.NONE, Settle.NODE)),
    (ANSWERED, (UNCLEAR,), Decision(Next.RELAY, Mark.NONE, Settle.NODE)),
    (Unreachable("refused"), (), RETRY_BREAKER),
    (TimedOut("slow"), (), RETRY_BREAKER),
    (Broken("reset"), (), RETRY_BREAKER),
    (Garbage("not json"), (), RETRY_BREAKER),
    (NoFirstToken("closed", "ended before its first token"), (), RETRY_BREAKER),
    (NoFirstToken("timeout", "no token in time"), (UNCLEAR,), RETRY_BREAKER),
    (Unreachable("refused"), (UNCLEAR,), RETRY_BREAKER),
    (_error(502, Blame.NODE), (), RETRY_BREAKER),
    (_error(504, Blame.NODE), (UNCLEAR,), RETRY_BREAKER),
    (Overloaded(429, None, "full"), (), Decision(Next.RETRY, Mark.BUSY, Settle.KEEP)),
    (Overloaded(503, 2.0, "full"), (UNCLEAR,), Decision(Next.RETRY, Mark.BUSY, Settle.KEEP)),
    (_error(500, Blame.REQUEST), (), ANSWER),
    (_error(500, Blame.REQUEST), (OTHER_UNCLEAR,), ANSWER),
    (_error(501, Blame.REQUEST), (), ANSWER),
    (UNCLEAR, (), Decision(Next.RETRY, Mark.UNCLEAR, Settle.KEEP)),
    (UNCLEAR, (OTHER_UNCLEAR,), Decision(Next.RETRY, Mark.UNCLEAR, Settle.KEEP)),
    (UNCLEAR, (OTHER_UNCLEAR, _error(500, Blame.UNCLEAR)), ANSWER),
    (_error(502, Blame.NODE, "boom"), (_error(500, Blame.UNCLEAR, "boom"),), RETRY_BREAKER),
]


@pytest.mark.parametrize(("outcome", "earlier", "expected"), POLICY)
def test_policy_table(
    outcome: Outcome, earlier: tuple[ErrorAnswer, ...], expected: Decision
) -> None:
    """Each typed outcome, given the request's earlier unclear 500s, gets the table's decision."""
    assert decide(outcome, earlier) == expected


def test_unclear_500s_left_at_the_end_count_against_their_nodes() -> None:
    """With no other node to compare with, a 500 is taken at its word: the node's fault."""
    assert AT_END is Settle.NODE


def _envelope(type_: str, code: object = None, message: str = "bad input") -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return orjson.dumps(body)


BODIES = [
    # (status, body, outcome type, blame or None, message)
    (500, _envelope("BadRequestError", 400), ErrorAnswer, Blame.REQUEST, "bad input"),
    (500, _envelope("invalid_request_error"), ErrorAnswer, Blame.REQUEST, "bad input"),
    (500, _envelope("exceed_context_size_error", 400), ErrorAnswer, Blame.REQUEST, "bad input"),
    (500, _envelope("InternalServerError", 500), ErrorAnswer, Blame.UNCLEAR, "bad input"),
    (500, _envelope("server_error", "422"), ErrorAnswer, Blame.REQUEST, "bad input"),
    (500, b'{"error":"Input validation error: too long","error_type":"validation"}',
     ErrorAnswer, Blame.REQUEST, "Input validation error: too long"),
    (500, b'{"error":"Request failed during generation","error_type":"generation"}',
     ErrorAnswer, Blame.UNCLEAR, "Request failed during generation"),
    (500, b'{"object":"error","message":"m","type":"BadRequestError","code":400}',
     ErrorAnswer, Blame.REQUEST, "m"),
    (500, b'{"detail":"Unknown model: x"}', ErrorAnswer, Blame.UNCLEAR, "Unknown model: x"),
    (500, b'{"error":"llama runner process has terminated"}', ErrorAnswer, Blame.UNCLEAR,
     "llama runner process has terminated"),
    (500, b"Internal Server Error", ErrorAnswer, Blame.UNCLEAR, "Internal Server Error"),
    (500, b"", ErrorAnswer, Blame.UNCLEAR, ""),
    (500, b'{"error":"Model is overloaded","error_type":"overloaded"}', Overloaded, None, ""),
    (501, _envelope("NotImplementedError", 501), ErrorAnswer, Blame.REQUEST, "bad input"),
    (502, _envelope("invalid_request_error"), ErrorAnswer, Blame.NODE, "bad input"),
    (504, b"<html>Gateway Timeout</html>", ErrorAnswer, Blame.NODE, "<html>Gateway Timeout</html>"),
    (507, b"", ErrorAnswer, Blame.NODE, ""),
    (429, b'{"error":"Model is overloaded","error_type":"overloaded"}', Overloaded, None, ""),
    (503, b'{"error":"server busy, please try again."}', Overloaded, None, ""),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "kind", "blame", "message"), BODIES)
def test_error_answers_read(
    status: int, body: bytes, kind: type, blame: Blame | None, message: str
) -> None:
    """A node's error answer becomes the outcome its status and body say (the shapes vLLM, TGI,
    llama.cpp, Ollama and FastAPI send); only the body's type or code blames the request."""
    outcome = error_outcome(status, {"content-type": "application/json"}, body, "n")
    assert type(outcome) is kind
    if isinstance(outcome, ErrorAnswer):
        assert outcome.blame is blame
        assert outcome.message == message


def test_a_request_fault_500_reaches_the_client_as_400() -> None:
    """A 500 whose body says the input is invalid is a 400 to the client (clients retry a 5xx);
    an unclear 500 and a 501 keep their status."""
    assert error_outcome(500, {}, _envelope("BadRequestError"), "n").client_status == 400  # type: ignore[union-attr]
    assert UNCLEAR.client_status == 500
    assert _error(501, Blame.REQUEST).client_status == 501


def test_overload_keeps_the_nodes_retry_after() -> None:
    """A node's Retry-After in seconds is kept with its overload."""
    outcome = error_outcome(429, {"retry-after": "7"}, b"", "n")
    assert outcome == Overloaded(429, 7.0, "n is overloaded (429)")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("3", 3.0), (" 1.5 ", 1.5), ("-1", None), ("nan", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    """Retry-After is read in seconds; dates and nonsense are ignored."""
    assert retry_after_s(value) == seconds


FULL_429 = Overloaded(429, 7.0, "a is overloaded (429)")
FULL_503 = Overloaded(503, 2.5, "b is overloaded (503)")
FULL_BARE = Overloaded(503, None, "c is overloaded (503)")

FINAL: list[tuple[list[Failure], type, int | None]] = [
    ([], NoCapacity, 5),
    ([FULL_429, Overloaded(429, None, "b")], RateLimited, 7),
    ([FULL_429, FULL_503], NoCapacity, 3),
    ([FULL_BARE], NoCapacity, 5),
    ([FULL_429, Unreachable("d: refused")], UpstreamError, None),
    ([TimedOut("a"), TimedOut("b")], UpstreamTimeout, None),
    ([TimedOut("a"), NoFirstToken("timeout", "b sent no token")], UpstreamTimeout, None),
    ([NoFirstToken("closed", "a ended its stream")], UpstreamError, None),
    ([TimedOut("a"), Broken("b")], UpstreamError, None),
    ([UNCLEAR], UpstreamError, None),
]


@pytest.mark.parametrize(("failures", "error", "retry_after"), FINAL)
def test_final_error(failures: list[Failure], error: type, retry_after: int | None) -> None:
    """No node left: 429 when every node said 429, 503 when every one was overloaded otherwise
    (Retry-After: the soonest a node named, else the router's), 504 when all timed out, else
    502; the message names each failure."""
    err = final_error("m", failures, retry_after_s=5)
    assert type(err) is error
    assert err.retry_after_s == retry_after
    for failure in failures:
        assert failure.reason in err.message


ENDINGS = [
    # (surface, the whole stream, fault)
    (Surface.CHAT, b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
     b"data: [DONE]\n\n", None),
    (Surface.CHAT, b'data:{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}\n\n'
     b"data:[DONE]\n\n", None),
    (Surface.CHAT, b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n',
     "ended before its end"),
    (Surface.CHAT, b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n',
     "ended before its end"),
    (Surface.CHAT, b'data: {"error":{"message":"out of memory"}}\n\n', None),
    (Surface.CHAT, b"", "ended without sending anything"),
    (Surface.OLLAMA_CHAT, b'{"message":{"content":"hi"},"done":false}\n{"done":true}\n', None),
    (Surface.OLLAMA_CHAT, b'{"message":{"content":"hi"},"done":false}\n', "ended before its end"),
    (Surface.TRITON, b'data: {"text_output":"hi"}\n\n', None),
]  # fmt: skip


@pytest.mark.parametrize(("surface", "stream", "fault"), ENDINGS)
def test_stream_endings(surface: Surface, stream: bytes, fault: str | None) -> None:
    """A stream is properly ended where its answer reader saw its surface's end (an OpenAI
    stream's finish reason then [DONE], Ollama's done) or an error the node sent in it."""
    answer = AnswerReader(surface)
    answer.feed(stream, 0.0)
    answer.end(0.0)
    assert improper_end(answer) == fault


RETRY_LABELS = [
    (Unreachable("refused"), "unreachable"),
    (TimedOut("slow"), "timeout"),
    (Broken("reset"), "broken"),
    (Garbage("html"), "garbage"),
    (Overloaded(429, None, "full"), "overloaded"),
    (_error(502, Blame.NODE), "server_error"),
    (NoFirstToken("closed", "gone"), "closed_before_first_token"),
    (NoFirstToken("timeout", "slow"), "timeout_before_first_token"),
    (NoFirstToken("garbage", "noise"), "garbage_before_first_token"),
]


@pytest.mark.parametrize(("failure", "label"), RETRY_LABELS)
def test_retry_reasons(failure: Failure, label: str) -> None:
    """Each failure counts in router_retries_total under a reason from a small fixed set."""
    assert retry_label(failure) == label
