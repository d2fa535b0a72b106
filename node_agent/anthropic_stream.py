"""A chat-completions stream written as an Anthropic Messages stream.

``message_start`` first (its ``usage`` holds zeros: chat sends its counts only at the end), then
a content block per run of one kind of output: ``thinking`` (``thinking_delta``), ``text``
(``text_delta``) and one ``tool_use`` block per call (``input_json_delta`` with the call's
``arguments`` as they come), each opened with ``content_block_start`` and closed with
``content_block_stop`` when the next begins or the answer ends. Then ``message_delta`` with the
``stop_reason`` and the counts (``input_tokens`` less the cached prompt, ``output_tokens``,
``cache_read_input_tokens``) and ``message_stop``. An error once the stream has begun is an
``error`` event, which ends it.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from node_protocol.surface_errors import anthropic_error_event

from .anthropic_chat import MessagesAsk, message_id, stop_reason, usage
from .chat_answer import ChatDelta, ToolCall, Usage


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class AnthropicStream:
    """Writes one answer's events from the chat deltas, in order."""

    def __init__(self, ask: MessagesAsk) -> None:
        self._ask = ask
        self._index = -1  # the open block's index (-1: none yet)
        self._open: str | None = None  # the open block's kind: text, thinking, tool_use
        self._tool: int | None = None  # the chat index of the call in the open tool_use block
        self._finish: str | None = None
        self._stop: str | None = None
        self._usage: Usage | None = None
        self.pieces = 0

    @property
    def output_tokens(self) -> int:
        return self._usage.output if self._usage is not None else self.pieces

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._ask.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def take(self, delta: ChatDelta) -> bytes:
        """The events one chat delta makes (often one, sometimes none)."""
        out = []
        if delta.reasoning:
            out += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": delta.reasoning}))
        if delta.text:
            out += self._block("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta.text}))
        for call in delta.tool_calls:
            out += self._tool_call(call)
        self.pieces += delta.pieces
        self._finish = delta.finish_reason or self._finish
        self._stop = delta.stop_reason or self._stop
        self._usage = delta.usage or self._usage
        return b"".join(out)

    def finish(self) -> bytes:
        """Close the open block, then ``message_delta`` and ``message_stop``."""
        reason, sequence = stop_reason(self._ask, self._finish, self._stop)
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(self._usage, self.pieces),
        }
        closing = self._close()
        return b"".join(
            [
                *closing,
                _event("message_delta", end),
                _event("message_stop", {"type": "message_stop"}),
            ]
        )

    @staticmethod
    def error(message: str) -> bytes:
        return anthropic_error_event(message, "api_error")

    def _tool_call(self, call: ToolCall) -> list[bytes]:
        out = []
        if call.index != self._tool and (call.id or call.name):
            block = {
                "type": "tool_use",
                "id": call.id or f"toolu_{uuid.uuid4().hex}",
                "name": call.name or "",
                "input": {},
            }
            out += self._block("tool_use", block, force=True)
            self._tool = call.index
        if call.arguments and call.index == self._tool:
            out.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
        return out

    def _block(self, kind: str, start: dict[str, Any], *, force: bool = False) -> list[bytes]:
        """Open a block of ``kind`` unless one is open (``force``: a new one anyway)."""
        if self._open == kind and not force:
            return []
        out = self._close()
        self._index += 1
        self._open = kind
        data = {"type": "content_block_start", "index": self._index, "content_block": start}
        out.append(_event("content_block_start", data))
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return _event("content_block_delta", data)

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open, self._tool = None, None
        stop = {"type": "content_block_stop", "index": self._index}
        return [_event("content_block_stop", stop)]
