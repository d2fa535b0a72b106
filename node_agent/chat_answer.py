"""A backend's chat-completions answer as a translating route reads it: a whole
``chat.completion`` (:func:`answer_of`) or its stream, one :class:`ChatDelta` per event
(:func:`chat_deltas`).

Only the first choice is read (a translated request asks for one). Tool calls come as OpenAI
sends them: whole in a body; in a stream, a call's first delta carries its ``index``, ``id`` and
``name`` and later ones more of its ``arguments`` under the same ``index``. Reasoning text is
read from ``reasoning_content`` or ``reasoning``. A stream must end with ``data: [DONE]``: one
that stops before it was cut, and an ``{"error": ...}`` event inside it is the backend's error.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from .backend_answer import Upstream
from .errors import AgentError, BackendBadAnswer, BackendRefused

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Usage:
    """The backend's counts: prompt (all of it, cached included), cached prompt, output."""

    prompt: int = 0
    output: int = 0
    cached: int | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole tool call, or one piece of a streamed one (``id`` and ``name`` on its first)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class ChatDelta:
    """What one event (or a whole answer) says."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None  # the stop string that ended it, where the engine says (vLLM)
    usage: Usage | None = None

    @property
    def pieces(self) -> int:
        """Pieces of output in it (one token each when nothing counted them)."""
        return int(bool(self.text)) + int(bool(self.reasoning)) + len(self.tool_calls)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(
        _int(raw.get("prompt_tokens")) or 0, _int(raw.get("completion_tokens")) or 0, cached
    )


def _tool_calls(raw: Any) -> list[ToolCall]:
    calls = []
    for position, call in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        index = _int(call.get("index"))
        arguments = function.get("arguments")
        calls.append(
            ToolCall(
                index=position if index is None else index,
                id=call.get("id") if isinstance(call.get("id"), str) else None,
                name=function.get("name") if isinstance(function.get("name"), str) else None,
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return calls


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def delta_of(event: dict[str, Any], key: str = "delta") -> ChatDelta:
    """One chat event (``key="delta"``) or a whole answer (``key="message"``)."""
    delta = ChatDelta(usage=usage_of(event.get("usage")))
    choices = event.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return delta
    body = choice.get(key)
    if isinstance(body, dict):
        delta.text = _text(body.get("content"))
        delta.reasoning = _text(body.get("reasoning_content")) or _text(body.get("reasoning"))
        delta.tool_calls = _tool_calls(body.get("tool_calls"))
    reason = choice.get("finish_reason")
    delta.finish_reason = reason if isinstance(reason, str) and reason else None
    stop = choice.get("stop_reason")
    delta.stop_reason = stop if isinstance(stop, str) and stop else None
    return delta


def answer_of(raw: bytes) -> ChatDelta:
    """A whole ``chat.completion`` body, or :class:`BackendBadAnswer`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BackendBadAnswer("the backend's chat answer is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise BackendBadAnswer("the backend's chat answer has no choices")
    return delta_of(body, "message")


def refusal(status: int, raw: bytes) -> AgentError:
    """The backend's error answer (any envelope, or plain text) with its status and message."""
    message = raw[:500].decode(errors="replace").strip()
    with suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
        error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            message = error
    message = message or f"the backend answered {status}"
    if status < 400:
        return BackendBadAnswer(f"the backend answered {status}: {message}")
    return BackendRefused(status, message)


def _event(payload: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BackendBadAnswer("the backend sent a stream event that is not JSON") from exc
    if not isinstance(event, dict):
        raise BackendBadAnswer("the backend sent a stream event that is not an object")
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendRefused(500, message if isinstance(message, str) else str(error))
    return event


async def chat_deltas(upstream: Upstream) -> AsyncGenerator[ChatDelta, None]:
    """The deltas of a chat stream as they arrive, up to its ``[DONE]``."""
    data: list[bytes] = []
    while True:
        line = await upstream.readline()
        stripped = line.rstrip(b"\r\n")
        if stripped.startswith(b"data:"):
            data.append(stripped[5:].strip())
        elif not stripped and data:  # a blank line (or the end) completes the event
            payload, data = b"\n".join(data), []
            if payload == b"[DONE]":
                return
            yield delta_of(_event(payload))
        if not line:
            raise BackendBadAnswer("the backend's stream ended before its [DONE]")
