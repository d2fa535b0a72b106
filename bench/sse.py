"""Reading an OpenAI-style SSE stream: lines into events, events into a request record.

:class:`SseDecoder` takes the body one line at a time (``\\n`` or ``\\r\\n`` endings), skips
``:`` comments and hands back each event's ``data`` when the blank line that ends it arrives.
:class:`StreamTally` reads those events into a :class:`ClientRecord`: the first non-empty
``content`` / ``reasoning_content`` / ``text`` is the first token, ``usage`` gives the token
counts, ``[DONE]`` ends the stream, an ``error`` object inside the stream is an error.
Pure and synchronous: the gevent Locust user and the asyncio clients share it.
"""

from __future__ import annotations

from typing import Any

import orjson

from bench.records import EMPTY, NO_DONE, STREAM_ERROR, ClientRecord


class SseDecoder:
    """Splits an SSE body, fed line by line, into the data of each event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed_line(self, raw: bytes) -> str | None:
        """Take one line; return the event's data when this line ends an event."""
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def feed(self, chunk: bytes) -> list[str]:
        """Take a chunk of whole lines (tests and non-streaming bodies)."""
        events = [self.feed_line(line) for line in chunk.splitlines(keepends=True)]
        return [e for e in events if e is not None]


def _delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "") + str(delta.get("reasoning_content") or "")
    return str(choice.get("text") or "")


class StreamTally:
    """Reads one stream's events into ``record``; :meth:`finish` classifies the outcome."""

    def __init__(self, record: ClientRecord) -> None:
        self.record = record
        self.done = False

    def event(self, data: str, now: float) -> None:
        rec = self.record
        if rec.t_first_event is None:
            rec.t_first_event = now
        if data == "[DONE]":
            self.done = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            rec.error = STREAM_ERROR
            rec.detail = str(obj["error"])[:200]
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
        choices = obj.get("choices") or ()
        if any(isinstance(c, dict) and _delta_text(c) for c in choices):
            if rec.t_first_token is None:
                rec.t_first_token = now
            rec.t_last_token = now
            rec.token_times.append(round(now - rec.t_send, 6))

    def finish(self, now: float) -> None:
        """Close the record: no ``[DONE]`` or no token is an error unless one is set."""
        rec = self.record
        rec.t_done = now
        if rec.completion_tokens is None:
            rec.tokens_from = "chunks"
        if rec.error is not None:
            return
        if not self.done:
            rec.error = NO_DONE
        elif rec.t_first_token is None:
            rec.error = EMPTY
