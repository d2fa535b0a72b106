"""Anthropic Messages and OpenAI Responses answers of an emulated engine that speaks them itself
(vLLM; llama-server writes the same events), shaped from one :class:`~.job.Job`.

Messages: ``message_start`` (with the prompt's count), a ``text`` content block with a
``text_delta`` per token, ``content_block_stop``, ``message_delta`` (``stop_reason``
``max_tokens`` or ``end_turn``, the output count) and ``message_stop``; a whole answer is one
``message``; an error once streaming has begun is ``event: error`` with Anthropic's envelope.

Responses: ``response.created``, ``response.in_progress``, the message item and its
``output_text`` part opened, a ``response.output_text.delta`` per token, the text, part and item
closed, then ``response.completed`` with the ``response`` and its ``usage``; a whole answer is
one ``response``; an error once streaming has begun is an ``error`` event. Every event carries
``sequence_number``.

The emulated model never calls a tool: a request may declare tools; the answer is text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import FaceError
from .job import Job
from .openai_fields import FieldError, message_prompt_tokens
from .streaming import StreamFormat
from .tokens import prompt_tokens

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_error(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def messages_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt of a Messages body: its system text and its messages' text."""
    system = body.get("system")
    texts = [system] if isinstance(system, str) else []
    if isinstance(system, list):
        texts += [
            b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str)
        ]
    texts = [t for t in texts if isinstance(t, str)]
    return prompt_tokens(texts) + message_prompt_tokens(body.get("messages"))


def responses_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt of a Responses body: its instructions and its input's text."""
    value = body.get("input")
    instructions = body.get("instructions")
    texts = [instructions] if isinstance(instructions, str) else []
    if isinstance(value, str):
        return prompt_tokens([*texts, value])
    if not isinstance(value, list) or not value:
        raise FieldError("input", "input must be a string or a non-empty list")
    for item in value:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and "text" in p]
        elif isinstance(item, dict) and isinstance(item.get("output"), str):
            texts.append(item["output"])
    return prompt_tokens([t for t in texts if isinstance(t, str)])


@dataclass(slots=True)
class MessagesReply:
    """The shapes of one Messages answer."""

    model: str
    rid: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")

    def _message(self, job: Job, content: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        reason = ("max_tokens" if job.finish_reason == "length" else "end_turn") if done else None
        output = job.generated if done else 0
        return {
            "id": self.rid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": {"input_tokens": job.prompt_tokens, "output_tokens": output},
        }

    def body(self, job: Job, text: str) -> dict[str, Any]:
        return self._message(job, [{"type": "text", "text": text}], done=True)

    def stream_format(self, job: Job) -> StreamFormat:
        def head() -> Iterable[bytes]:
            start = {"type": "message_start", "message": self._message(job, [], done=False)}
            yield event("message_start", start)
            block = {"type": "text", "text": ""}
            yield event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )

        def token(_index: int, text: str, _last: bool) -> bytes:
            delta = {"type": "text_delta", "text": text}
            return event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )

        def tail() -> Iterable[bytes]:
            yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            done = self._message(job, [], done=True)
            delta = {"stop_reason": done["stop_reason"], "stop_sequence": None}
            usage = {"output_tokens": job.generated}
            yield event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            yield event("message_stop", {"type": "message_stop"})

        def error(exc: FaceError) -> Iterable[bytes]:
            yield event("error", anthropic_error(exc.status, exc.message, "internal_error"))

        return StreamFormat(SSE_CONTENT_TYPE, token, head, tail, error=error, early_headers=True)


@dataclass(slots=True)
class ResponsesReply:
    """The shapes of one Responses answer."""

    model: str
    max_output_tokens: int | None
    rid: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    item: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    seq: int = 0

    def _event(self, kind: str, **data: Any) -> bytes:
        self.seq += 1
        return event(kind, {"type": kind, "sequence_number": self.seq, **data})

    def response(self, job: Job, text: str | None) -> dict[str, Any]:
        """The ``response`` object: in progress (``text`` None) or done."""
        done = text is not None
        incomplete = done and job.finish_reason == "length"
        status = "incomplete" if incomplete else "completed" if done else "in_progress"
        output = [self._item(text)] if done else []
        answer: dict[str, Any] = {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "max_output_tokens": self.max_output_tokens,
            "store": False,
            "error": None,
        }
        if done:
            answer["usage"] = {
                "input_tokens": job.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": job.generated,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": job.prompt_tokens + job.generated,
            }
        return answer

    def _item(self, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        status = "in_progress" if text is None else "completed"
        return {"type": "message", "id": self.item, "status": status, "role": "assistant",
                "content": content}  # fmt: skip

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def stream_format(self, job: Job) -> StreamFormat:
        pieces: list[str] = []
        at = {"item_id": self.item, "output_index": 0, "content_index": 0}

        def head() -> Iterable[bytes]:
            yield self._event("response.created", response=self.response(job, None))
            yield self._event("response.in_progress", response=self.response(job, None))
            yield self._event("response.output_item.added", output_index=0, item=self._item(None))
            yield self._event("response.content_part.added", **at, part=self._part(""))

        def token(_index: int, text: str, _last: bool) -> bytes:
            pieces.append(text)
            return self._event("response.output_text.delta", **at, delta=text, logprobs=[])

        def tail() -> Iterable[bytes]:
            text = "".join(pieces)
            yield self._event("response.output_text.done", **at, text=text, logprobs=[])
            yield self._event("response.content_part.done", **at, part=self._part(text))
            yield self._event("response.output_item.done", output_index=0, item=self._item(text))
            answer = self.response(job, text)
            yield self._event(f"response.{answer['status']}", response=answer)

        def error(exc: FaceError) -> Iterable[bytes]:
            yield self._event("error", code="server_error", message=exc.message, param=None)

        return StreamFormat(SSE_CONTENT_TYPE, token, head, tail, error=error, early_headers=True)
