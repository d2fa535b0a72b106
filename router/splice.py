"""Splicing a continuation's stream into the client's, so that the client reads one answer.

The client already has the start of a stream from the node that was cut. A continuation's events
are rewritten on their way: the stream's own ``id`` and ``created`` again, no second role
chunk (an opening event with no output in it is dropped, a role beside text is removed), and
usage that counts the whole answer (the tokens sent before the cut added to the completion, and
taken from the prompt, which carried them). The continuation's own ``[DONE]`` is the stream's
one. Only whole events go out, so a continuation cut in turn leaves the client at an event's
end. This runs only on a resumed stream, after a cut: it parses every event.
"""

from __future__ import annotations

from typing import Any

import orjson

from node_protocol.events import Surface

_SSE = (Surface.CHAT, Surface.COMPLETIONS)
_OUTPUT = ("content", "tool_calls", "function_call", "reasoning_content", "reasoning", "refusal")


class Splicer:
    """Rewrites one continuation's stream for the client (:meth:`feed` each piece)."""

    __slots__ = ("_carried", "_created", "_rest", "_sep", "_sse", "_stream_id")

    def __init__(
        self, surface: Surface, stream_id: str | None, created: int | None, carried: int
    ) -> None:
        self._sse = surface in _SSE
        self._sep = b"\n\n" if self._sse else b"\n"
        self._stream_id = stream_id
        self._created = created
        self._carried = carried  # output tokens the client got before this continuation
        self._rest = b""  # the start of an event still to come

    def feed(self, piece: bytes) -> bytes:
        """The client's bytes for ``piece``: the whole events it completes, rewritten."""
        data = self._rest + piece
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        sep = self._sep
        end = data.rfind(sep)
        if end < 0:
            self._rest = data
            return b""
        end += len(sep)
        self._rest = data[end:]
        out = [self._event(e) for e in data[:end].split(sep) if e.strip()]
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes:
        if not self._sse:
            event = _json(raw)
            if event is None:
                return raw + b"\n"
            return orjson.dumps(self._ollama(event)) + b"\n"
        lines = raw.split(b"\n")
        data = [line[5:] for line in lines if line.startswith(b"data:")]
        if not data:
            return raw + b"\n\n"  # a comment or another field: as it came
        payload = b"\n".join(data).strip()
        event = None if payload == b"[DONE]" else _json(payload)
        if event is None:
            return raw + b"\n\n"
        rewritten = self._openai(event)
        if rewritten is None:
            return b""
        return b"data: " + orjson.dumps(rewritten) + b"\n\n"

    def _openai(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event for the client; None for the continuation's opening (nothing in it)."""
        if self._stream_id is not None and "id" in event:
            event["id"] = self._stream_id
        if self._created is not None and "created" in event:
            event["created"] = self._created
        choices = event.get("choices")
        if isinstance(choices, list) and choices:
            kept = [c for c in choices if not _opening(c)]
            if not kept and not event.get("usage"):
                return None
            event["choices"] = kept
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._add(usage, "completion_tokens", "prompt_tokens")
            completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
            if isinstance(completion, int) and isinstance(prompt, int):
                usage["total_tokens"] = completion + prompt
        return event

    def _ollama(self, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("done") is True:
            self._add(event, "eval_count", "prompt_eval_count")
        return event

    def _add(self, counts: dict[str, Any], output: str, prompt: str) -> None:
        """Count the carried tokens as output, not as prompt (the continuation's prompt held
        them)."""
        carried = self._carried
        if _count(counts.get(output)):
            counts[output] += carried
        if _count(counts.get(prompt)):
            counts[prompt] = max(0, counts[prompt] - carried)


def _opening(choice: Any) -> bool:
    """A choice that only opens the continuation: a role and no output, no finish reason. A
    role beside output is removed (the client had its role chunk)."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    delta.pop("role", None)
    return not choice.get("finish_reason") and not any(delta.get(k) for k in _OUTPUT)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
