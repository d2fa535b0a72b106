"""The answer reader's view of OpenAI chat and completions events, read two ways that agree.

A piece of output is a choice whose ``delta`` (``message`` in a body) holds ``content``,
``reasoning_content``, ``reasoning``, ``refusal``, ``tool_calls`` or ``function_call``, or whose
``text`` (completions) is set; a choice's ``finish_reason`` and the event's ``usage`` (and
llama.cpp's ``timings``) are noted.

Every event of every stream is read here, so the usual event is decoded straight into the few
fields this needs (:data:`DECODE`, msgspec: the rest of the event is skipped, not built) and
read by :func:`read_typed`. An event whose fields are not of the usual types (a number where a
string goes, ``choices`` that is not a list) is read from its parsed JSON by :func:`read_event`
instead, with the same rules; a property test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from node_protocol.surface_events import token_count as _count

if TYPE_CHECKING:
    from node_protocol.events import AnswerReader

_PIECE_KEYS = (
    "content", "tool_calls", "reasoning_content", "reasoning", "refusal", "function_call",
)  # fmt: skip


class Delta(msgspec.Struct, gc=False):
    """A choice's ``delta`` (``message`` in a whole answer): the fields that make a piece."""

    content: str | None = None
    tool_calls: list[Any] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    function_call: dict[str, Any] | None = None


class Choice(msgspec.Struct, gc=False):
    delta: Delta | None = None
    message: Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class Event(msgspec.Struct, gc=False):
    """One event (or a whole answer): its choices, counts and error; nothing else is kept."""

    choices: list[Choice] | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: Any = None


DECODE = msgspec.json.Decoder(Event).decode
# Raised by DECODE for JSON whose fields are not of the usual types (read_event reads it) and,
# as its base class, for bytes that are not JSON at all.
Unusual = msgspec.ValidationError
NotJson = msgspec.DecodeError


def _is_piece(delta: Delta | None) -> bool:
    return delta is not None and bool(
        delta.content
        or delta.tool_calls
        or delta.reasoning_content
        or delta.reasoning
        or delta.refusal
        or delta.function_call
    )


def read_typed(reader: AnswerReader, event: Event) -> int:
    """One decoded event: the pieces of output it holds (its counts and end are noted)."""
    if event.error:
        reader.note_error(event.error)
        return 0
    pieces = 0
    if event.choices:
        for choice in event.choices:
            delta = choice.delta
            # Most pieces are a delta's content (chat) or a text (completions): checked first,
            # inline; the other fields only where there is a delta or message.
            if (
                (delta is not None and (delta.content or _is_piece(delta)))
                or choice.text
                or (choice.message is not None and _is_piece(choice.message))
            ):
                pieces += 1
            if choice.finish_reason:
                reader.finish_reason = choice.finish_reason
    if event.usage is not None or event.timings is not None:
        note_usage(reader, event.usage, event.timings)
    return pieces


def _holds_piece(delta: Any) -> bool:
    return type(delta) is dict and any(delta.get(key) for key in _PIECE_KEYS)


def read_event(reader: AnswerReader, event: dict[str, Any]) -> int:
    """The same as :func:`read_typed`, for an event parsed as it came (its error is noted by
    the caller): fields of other types are passed over."""
    pieces = 0
    choices = event.get("choices")
    if type(choices) is list:
        for choice in choices:
            if type(choice) is not dict:
                continue
            text = choice.get("text")
            if (
                _holds_piece(choice.get("delta"))
                or _holds_piece(choice.get("message"))
                or (type(text) is str and text)
            ):
                pieces += 1
            reason = choice.get("finish_reason")
            if reason:
                reader.finish_reason = reason if isinstance(reason, str) else str(reason)
    usage, timings = event.get("usage"), event.get("timings")
    note_usage(
        reader,
        usage if type(usage) is dict else None,
        timings if type(timings) is dict else None,
    )
    return pieces


def note_usage(
    reader: AnswerReader, usage: dict[str, Any] | None, timings: dict[str, Any] | None
) -> None:
    """OpenAI ``usage``, and llama.cpp's ``timings`` where ``usage`` lacks a count."""
    if usage is not None:
        if (completion := _count(usage.get("completion_tokens"))) is not None:
            reader.usage_tokens = completion
        if (prompt := _count(usage.get("prompt_tokens"))) is not None:
            reader.prompt_tokens = prompt
        details = usage.get("prompt_tokens_details")
        if type(details) is dict and (cached := _count(details.get("cached_tokens"))) is not None:
            reader.cached_tokens = cached
    if timings is not None:
        cached = _count(timings.get("cache_n"))
        if reader.cached_tokens is None:
            reader.cached_tokens = cached
        processed = _count(timings.get("prompt_n"))
        if reader.prompt_tokens is None and processed is not None:
            reader.prompt_tokens = processed + (cached or 0)
