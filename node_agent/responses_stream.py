"""A chat-completions stream written as an OpenAI Responses stream.

``response.created`` and ``response.in_progress`` first; then one output item per run of one kind
of output, each announced with ``response.output_item.added`` and closed with
``response.output_item.done`` when the next begins or the answer ends:

- reasoning text: a ``reasoning`` item, ``response.reasoning_text.delta`` then ``.done``;
- text: a ``message`` item with one ``output_text`` part (``response.content_part.added``,
  ``response.output_text.delta`` per piece, ``response.output_text.done``,
  ``response.content_part.done``);
- each tool call: a ``function_call`` item, ``response.function_call_arguments.delta`` per piece
  of its arguments, then ``.done``.

Then ``response.completed`` (or ``response.incomplete``, with the reason) carrying the whole
``response`` and its ``usage``. Every event has a ``sequence_number``. An error once the stream
has begun is an ``error`` event, which ends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from node_protocol.surface_errors import responses_error_event

from .chat_answer import ChatDelta, ToolCall, Usage
from .responses_chat import (
    ResponsesAsk,
    call_item,
    ending,
    message_item,
    new_id,
    reasoning_item,
    response,
    usage,
)


@dataclass(slots=True)
class _Item:
    """The output item being written."""

    kind: str  # reasoning, message, function_call
    id: str
    index: int
    call: ToolCall | None = None
    text: list[str] = field(default_factory=list)


class ResponsesStream:
    """Writes one answer's events from the chat deltas, in order."""

    def __init__(self, ask: ResponsesAsk) -> None:
        self._ask = ask
        self._id = new_id("resp")
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # the items done so far
        self._item: _Item | None = None
        self._finish: str | None = None
        self._usage: Usage | None = None
        self.pieces = 0

    @property
    def output_tokens(self) -> int:
        return self._usage.output if self._usage is not None else self.pieces

    def _event(self, kind: str, **data: Any) -> bytes:
        self._seq += 1
        event = {"type": kind, "sequence_number": self._seq, **data}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def start(self) -> bytes:
        begun = response(self._ask, self._id, "in_progress", [])
        return self._event("response.created", response=begun) + self._event(
            "response.in_progress", response=begun
        )

    def take(self, delta: ChatDelta) -> bytes:
        """The events one chat delta makes (often one, sometimes none)."""
        out = []
        if delta.reasoning:
            item = self._open("reasoning")
            out += item[1]
            out.append(self._piece(item[0], "response.reasoning_text.delta", delta.reasoning))
        if delta.text:
            item = self._open("message")
            out += item[1]
            out.append(self._piece(item[0], "response.output_text.delta", delta.text))
        for call in delta.tool_calls:
            out += self._tool_call(call)
        self.pieces += delta.pieces
        self._finish = delta.finish_reason or self._finish
        self._usage = delta.usage or self._usage
        return b"".join(out)

    def finish(self) -> bytes:
        """Close the open item, then ``response.completed`` or ``response.incomplete``."""
        out = self._close()
        status, why = ending(self._finish)
        counts = usage(self._usage, self.pieces)
        done = response(self._ask, self._id, status, self._output, usage=counts, **why)
        out.append(self._event(f"response.{status}", response=done))
        return b"".join(out)

    @staticmethod
    def error(message: str) -> bytes:
        return responses_error_event(message, "backend_error")

    def _tool_call(self, call: ToolCall) -> list[bytes]:
        out = []
        item = self._item
        same = item is not None and item.call is not None and item.call.index == call.index
        if not same and (call.id or call.name):
            out += self._close()
            item = self._begin("function_call", call)
            out.append(self._added(item))
        if call.arguments and item is not None and item.kind == "function_call":
            out.append(self._piece(item, "response.function_call_arguments.delta", call.arguments))
        return out

    def _open(self, kind: str) -> tuple[_Item, list[bytes]]:
        """The open item of ``kind``, opening it (and closing another) when needed."""
        if self._item is not None and self._item.kind == kind:
            return self._item, []
        out = self._close()
        item = self._begin(kind)
        out.append(self._added(item))
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(self._at(item, "response.content_part.added", content_index=0, part=part))
        return item, out

    def _begin(self, kind: str, call: ToolCall | None = None) -> _Item:
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        if call is not None and not call.id:  # one id for the call, in every event
            call = ToolCall(call.index, new_id("call"), call.name, call.arguments)
        self._item = _Item(kind, new_id(prefix), len(self._output), call)
        return self._item

    def _added(self, item: _Item) -> bytes:
        return self._event(
            "response.output_item.added", output_index=item.index, item=self._shape(item, False)
        )

    def _piece(self, item: _Item, kind: str, text: str) -> bytes:
        item.text.append(text)
        extra: dict[str, Any] = {} if item.kind == "function_call" else {"content_index": 0}
        return self._at(item, kind, delta=text, **extra)

    def _at(self, item: _Item, kind: str, **data: Any) -> bytes:
        return self._event(kind, item_id=item.id, output_index=item.index, **data)

    def _shape(self, item: _Item, done: bool) -> dict[str, Any]:
        text = "".join(item.text)
        if item.kind == "reasoning":
            return reasoning_item(item.id, text if done else "")
        if item.kind == "message":
            return message_item(item.id, text, "completed" if done else "in_progress")
        assert item.call is not None
        return call_item(
            item.id, item.call, text if done else "", "completed" if done else "in_progress"
        )

    def _close(self) -> list[bytes]:
        item, self._item = self._item, None
        if item is None:
            return []
        text = "".join(item.text)
        out = []
        if item.kind == "reasoning":
            out.append(self._at(item, "response.reasoning_text.done", content_index=0, text=text))
        elif item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(self._at(item, "response.output_text.done", content_index=0, text=text))
            out.append(self._at(item, "response.content_part.done", content_index=0, part=part))
        else:
            out.append(self._at(item, "response.function_call_arguments.done", arguments=text))
        shaped = self._shape(item, True)
        self._output.append(shaped)
        out.append(self._event("response.output_item.done", output_index=item.index, item=shaped))
        return out
