"""What one attempt at a node means: retry elsewhere, answer the client, or count against a node.

An attempt ends in one typed outcome (:data:`Outcome`). :func:`decide` turns it, together with
the unclear 500s earlier attempts of the same request left undecided, into a :class:`Decision`;
the forwarder only applies it. Pure: no I/O, no clock, no registry.

=====================================  =======  ==========  ==========================
outcome                                next     this node   earlier unclear 500s
=====================================  =======  ==========  ==========================
Answered (fit to relay)                relay    —           the nodes' fault
Unreachable, TimedOut, Broken,         retry    breaker     kept
Garbage, NoFirstToken, ErrorAnswer NODE
Overloaded (429, 503)                  retry    busy        kept
ErrorAnswer REQUEST (says bad input)   answer   —           the request's: forgotten
ErrorAnswer UNCLEAR, same as earlier   answer   —           the request's: forgotten
ErrorAnswer UNCLEAR, new               retry    unclear     kept
candidates run out                     error    —           the nodes' fault (AT_END)
=====================================  =======  ==========  ==========================

Nothing the client can use has been sent before the answer's first token (content or a tool
call), so the headers wait for it: a node that closes, stalls or sends garbage between its headers
and its first token (:class:`NoFirstToken`) is a node fault like one that never answered, and an
error event in place of the first token is read like an error answer's body.

A node fault (no connection, a reset, a timeout, a gateway error, garbage) opens the node's
breaker. A request fault (a body that says the input is invalid, or the same 500 from two nodes)
is the client's to read and opens no breaker: a prompt the model rejects would otherwise take
every node it is retried on out of rotation. A plain 500 is unclear until another node's outcome
tells: an answer there makes it the first node's fault, the same 500 there the request's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import orjson

from router.errors import NoCapacity, RateLimited, RouterError, UpstreamError, UpstreamTimeout

MAX_MESSAGE = 300  # characters of a node's error message kept, compared and shown

# Error types and TGI error_types by which backends say the request itself is at fault
# (OpenAI/llama.cpp/LM Studio envelopes, vLLM's exception names, TGI's validation kinds).
REQUEST_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "invalid_request",
        "badrequesterror",
        "bad_request",
        "bad request",
        "unprocessableentityerror",
        "exceed_context_size_error",
        "validation",
        "validation_error",
        "template_error",
        "tool_error",
        "missing_template_variable",
    }
)
OVERLOADED_ERROR_TYPES = frozenset({"overloaded"})
OVERLOAD_STATUSES = frozenset({429, 503})


class Blame(Enum):
    """Whose fault an error answer is, as far as its status and body tell."""

    REQUEST = "request"  # the body says the input is invalid, or the node cannot do what it asks
    NODE = "node"  # a gateway error or another server error that is not about the input
    UNCLEAR = "unclear"  # a plain 500: another node's outcome decides


@dataclass(frozen=True, slots=True)
class Answered:
    """The node's answer is fit to relay: a success, or a client error the client is to read."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No connection to the node (refused, unreachable, a bad address): nothing was sent."""

    reason: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No connection, or no answer's headers, within the bounds."""

    reason: str


@dataclass(frozen=True, slots=True)
class Broken:
    """The connection closed or reset, or what came was not HTTP, before the headers."""

    reason: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """Headers came but the answer cannot be relayed: a stream that is not a stream, a whole
    answer that is not complete JSON or was broken off."""

    reason: str


@dataclass(frozen=True, slots=True)
class NoFirstToken:
    """The node sent its headers, then closed, stalled or sent garbage before its first token:
    nothing reached the client. ``why`` is ``closed``, ``timeout`` or ``garbage``."""

    why: str
    reason: str


@dataclass(frozen=True, slots=True)
class Overloaded:
    """The node said it is full (429, 503): it is busy, not broken."""

    status: int
    retry_after_s: float | None  # the node's own Retry-After, when it gave one in seconds
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """A server error other than overload, with what its body says."""

    status: int
    blame: Blame
    message: str  # the node's error message: two nodes' answers are the same when these are
    body: bytes
    content_type: str
    reason: str

    def same_as(self, other: ErrorAnswer) -> bool:
        return self.status == other.status and self.message == other.message

    @property
    def client_status(self) -> int:
        """The status the client gets: a 500 whose body says the input is invalid is a 400
        (clients retry a 5xx, and this request fails the same way every time)."""
        return 400 if self.blame is Blame.REQUEST and self.status == 500 else self.status


ANSWERED = Answered()

Failure = Unreachable | TimedOut | Broken | Garbage | NoFirstToken | Overloaded | ErrorAnswer
Outcome = Answered | Failure


class Next(Enum):
    RELAY = "relay"  # relay this node's answer to the client
    RETRY = "retry"  # try the next candidate
    ANSWER = "answer"  # answer the client with this node's error now


class Mark(Enum):
    """What the outcome says about the node that gave it."""

    NONE = "none"
    BREAKER = "breaker"  # a node fault: open its breaker
    BUSY = "busy"  # full: note it busy until its next report, breaker untouched
    UNCLEAR = "unclear"  # held until another node's outcome (or the end) decides


class Settle(Enum):
    """What the outcome says about the earlier attempts' unclear 500s."""

    KEEP = "keep"  # still undecided
    NODE = "node"  # their nodes' fault: open those breakers
    REQUEST = "request"  # the request's fault: forget them


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    node: Mark
    earlier: Settle


RELAY = Decision(Next.RELAY, Mark.NONE, Settle.NODE)
RETRY_NODE_FAULT = Decision(Next.RETRY, Mark.BREAKER, Settle.KEEP)
RETRY_BUSY = Decision(Next.RETRY, Mark.BUSY, Settle.KEEP)
RETRY_UNCLEAR = Decision(Next.RETRY, Mark.UNCLEAR, Settle.KEEP)
ANSWER_REQUEST_FAULT = Decision(Next.ANSWER, Mark.NONE, Settle.REQUEST)

AT_END = Settle.NODE
"""Unclear 500s still undecided when the candidates run out: with no other node to compare
with, a server error is taken at its word (the node's fault), as before the comparison."""


def decide(outcome: Outcome, unclear: Sequence[ErrorAnswer] = ()) -> Decision:
    """The policy: see the module's table. ``unclear``: this request's earlier unclear 500s."""
    match outcome:
        case Answered():
            return RELAY
        case Overloaded():
            return RETRY_BUSY
        case ErrorAnswer(blame=Blame.REQUEST):
            return ANSWER_REQUEST_FAULT
        case ErrorAnswer(blame=Blame.UNCLEAR):
            if any(outcome.same_as(earlier) for earlier in unclear):
                return ANSWER_REQUEST_FAULT
            return RETRY_UNCLEAR
        case _:
            return RETRY_NODE_FAULT


def retry_label(failure: Failure) -> str:
    """The failure's ``reason`` label on ``router_retries_total`` (a small fixed set)."""
    match failure:
        case NoFirstToken(why=why):
            return f"{why}_before_first_token"
        case ErrorAnswer():
            return "server_error"
        case _:
            return _LABELS[type(failure)]


_LABELS: dict[type, str] = {
    Unreachable: "unreachable",
    TimedOut: "timeout",
    Broken: "broken",
    Garbage: "garbage",
    Overloaded: "overloaded",
}


def error_outcome(
    status: int, headers: Mapping[str, str], body: bytes, node_name: str
) -> Overloaded | ErrorAnswer:
    """The outcome of a 429 or 5xx answer, from its status, headers and body."""
    message, said = read_error_body(body)
    if status in OVERLOAD_STATUSES or (status == 500 and said is _Said.OVERLOADED):
        retry = retry_after_s(headers.get("retry-after"))
        return Overloaded(status, retry, f"{node_name} is overloaded ({status})")
    if status == 500:
        blame = Blame.REQUEST if said is _Said.REQUEST else Blame.UNCLEAR
    elif status == 501:  # the node does not implement what the request asks for
        blame = Blame.REQUEST
    else:
        blame = Blame.NODE
    ctype = headers.get("content-type", "")
    reason = f"{node_name} answered {status} {message[:200]}".rstrip()
    return ErrorAnswer(status, blame, message, body, ctype, reason)


class _Said(Enum):
    REQUEST = "request"
    OVERLOADED = "overloaded"
    NOTHING = "nothing"


def read_error_body(body: bytes) -> tuple[str, _Said]:
    """The message of a node's error body and what its type says, in the shapes backends send:
    ``{"error": {"message", "type", "code"}}`` (OpenAI, vLLM, llama.cpp, LM Studio), ``{"error":
    str, "error_type"}`` (TGI, Ollama, Triton), ``{"object": "error", "message", "type"}`` (older
    vLLM), ``{"detail"}`` (FastAPI); anything else is its own text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return body.decode("utf-8", "replace").strip()[:MAX_MESSAGE], _Said.NOTHING
    error = parsed.get("error")
    kinds: tuple[object, ...]
    if isinstance(error, dict):
        message, kinds = error.get("message"), (error.get("type"), error.get("code"))
    elif isinstance(error, str):
        message, kinds = error, (parsed.get("error_type"),)
    elif "message" in parsed:
        message, kinds = parsed["message"], (parsed.get("type"), parsed.get("code"))
    else:
        message, kinds = parsed.get("detail"), ()
    text = (message if isinstance(message, str) else orjson.dumps(message).decode())[:MAX_MESSAGE]
    return text, _said_by(kinds)


def _said_by(kinds: tuple[object, ...]) -> _Said:
    for kind in kinds:
        if isinstance(kind, str) and not kind.isdigit():
            word = kind.lower()
            if word in REQUEST_ERROR_TYPES:
                return _Said.REQUEST
            if word in OVERLOADED_ERROR_TYPES:
                return _Said.OVERLOADED
        elif isinstance(kind, int | str) and not isinstance(kind, bool):
            code = int(kind)  # vLLM puts the HTTP status it meant in "code"
            if code == 429:
                return _Said.OVERLOADED
            if 400 <= code < 500:
                return _Said.REQUEST
    return _Said.NOTHING


def _timed_out(failure: Failure) -> bool:
    return isinstance(failure, TimedOut) or (
        isinstance(failure, NoFirstToken) and failure.why == "timeout"
    )


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or a date (clocks differ)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def final_error(model: str, failures: Sequence[Failure], retry_after_s: int) -> RouterError:
    """The client's error once no candidate is left: 429/503 with Retry-After when every node
    tried was overloaded, 504 when every one timed out, else 502 naming each failure.
    ``retry_after_s``: the Retry-After to give when no node gave one."""
    if not failures:
        return NoCapacity(
            f"no node can take a request for '{model}' now", retry_after_s=retry_after_s
        )
    reasons = "; ".join(f.reason for f in failures)
    overloads = [f for f in failures if isinstance(f, Overloaded)]
    if len(overloads) == len(failures):
        waits = [f.retry_after_s for f in overloads if f.retry_after_s is not None]
        retry = max(1, math.ceil(min(waits))) if waits else retry_after_s
        error = RateLimited if all(f.status == 429 for f in overloads) else NoCapacity
        message = f"every node for '{model}' is overloaded: {reasons}"
        return error(message, code="overloaded", retry_after_s=retry)
    if all(_timed_out(f) for f in failures):
        return UpstreamTimeout(f"no node answered in time for '{model}': {reasons}")
    return UpstreamError(f"no node could serve '{model}': {reasons}")
