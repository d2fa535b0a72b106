"""The answer reader's view of Anthropic Messages and OpenAI Responses answers.

Anthropic Messages (``/v1/messages``): a piece of output is a ``content_block_delta`` with a
``text_delta``, ``input_json_delta`` (a tool call's arguments) or ``thinking_delta``;
``message_start`` carries the prompt's counts, ``message_delta`` the output count and the
``stop_reason``; ``message_stop`` is the proper end. A whole answer is one ``message`` object.
Anthropic counts ``input_tokens`` apart from the prompt read from the cache
(``cache_read_input_tokens``) and written to it (``cache_creation_input_tokens``): the prompt is
their sum.

OpenAI Responses (``/v1/responses``): a piece of output is a ``response.output_text.delta``,
``response.function_call_arguments.delta``, ``response.refusal.delta`` or a reasoning delta;
``response.completed`` and ``response.incomplete`` carry the ``usage`` and are the proper end;
``response.failed`` and an ``error`` event are errors. A whole answer is one ``response`` object.

Each reader takes one decoded event and returns the pieces of output it held; it notes counts,
reasons, ends and errors on the :class:`~node_protocol.events.AnswerReader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node_protocol.events import AnswerReader

_ANTHROPIC_DELTAS = ("text", "partial_json", "thinking")
_RESPONSES_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete"})


def token_count(value: Any) -> int | None:
    """A token count as a backend sends it: a non-negative integer (Triton: in a list)."""
    if type(value) is list and len(value) == 1:
        value = value[0]
    if type(value) is int and value >= 0:
        return value
    return None


def _anthropic_usage(reader: AnswerReader, usage: Any, *, output: bool = True) -> None:
    """``usage`` of a message; ``output``: its output count is the answer's (``message_start``
    holds a placeholder there, before anything was generated)."""
    if type(usage) is not dict:
        return
    if output and (generated := token_count(usage.get("output_tokens"))) is not None:
        reader.usage_tokens = generated
    uncached = token_count(usage.get("input_tokens"))
    cached = token_count(usage.get("cache_read_input_tokens"))
    written = token_count(usage.get("cache_creation_input_tokens"))
    if cached is not None:
        reader.cached_tokens = cached
    if uncached is not None:
        reader.prompt_tokens = uncached + (cached or 0) + (written or 0)


def read_anthropic(reader: AnswerReader, event: dict[str, Any]) -> int:
    """One event of a Messages stream, or a whole ``message``."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta")
        if type(delta) is dict and any(delta.get(key) for key in _ANTHROPIC_DELTAS):
            return 1
        return 0
    if kind == "message_start":
        message = event.get("message")
        if type(message) is dict:
            _anthropic_usage(reader, message.get("usage"), output=False)
    elif kind in ("message_delta", "message"):
        _anthropic_usage(reader, event.get("usage"))
        delta = event.get("delta") if kind == "message_delta" else event
        reason = delta.get("stop_reason") if type(delta) is dict else None
        if isinstance(reason, str) and reason:
            reader.finish_reason = reason
    elif kind == "message_stop":
        reader.finished = reader.error is None
    return 0


def _responses_end(reader: AnswerReader, response: Any) -> None:
    """A ``response`` object: its usage, its status and, when it failed, its error."""
    if type(response) is not dict:
        return
    usage = response.get("usage")
    if type(usage) is dict:
        if (output := token_count(usage.get("output_tokens"))) is not None:
            reader.usage_tokens = output
        if (prompt := token_count(usage.get("input_tokens"))) is not None:
            reader.prompt_tokens = prompt
        details = usage.get("input_tokens_details")
        cached = token_count(details.get("cached_tokens")) if type(details) is dict else None
        if cached is not None:
            reader.cached_tokens = cached
    status = response.get("status")
    if status == "failed":
        error = response.get("error")
        reader.note_error(error if error else "the response failed")
        return
    incomplete = response.get("incomplete_details")
    reason = incomplete.get("reason") if type(incomplete) is dict else None
    if isinstance(reason, str) and reason:
        reader.finish_reason = reason
    elif isinstance(status, str) and status:
        reader.finish_reason = status
    if status in ("completed", "incomplete"):
        reader.finished = reader.error is None


def read_responses(reader: AnswerReader, event: dict[str, Any]) -> int:
    """One event of a Responses stream, or a whole ``response``."""
    kind = event.get("type")
    if kind in _RESPONSES_DELTAS:
        return 1 if event.get("delta") else 0
    if kind in _RESPONSES_ENDS or kind == "response.failed":
        _responses_end(reader, event.get("response"))
    elif kind == "error":
        message = event.get("message")
        reader.note_error(message if isinstance(message, str) and message else "stream error")
    elif event.get("object") == "response":
        _responses_end(reader, event)
    return 0
