"""OpenAI-style answers of the llama.cpp family (Ollama's ``/v1``, LM Studio): one builder.

Both frame a stream the same way: every content chunk repeats ``role``, a dedicated finish
chunk has an empty ``delta`` (completions: empty ``text``) and the ``finish_reason``, a usage
chunk with ``choices: []`` follows when asked, then ``data: [DONE]``. They differ in small
things the caller sets: the id, the ``system_fingerprint``, whether choices carry
``logprobs: null``, and whether ``created`` is pinned to the first token (Ollama).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import FaceError
from .job import Job
from .openai_fields import usage_of
from .streaming import SSE_DONE, StreamFormat, sse


@dataclass(slots=True)
class OpenAIReply:
    """The shapes of one answer: chunks of a stream or the whole body."""

    chat: bool
    rid: str
    model: str
    fingerprint: str
    logprobs: bool
    created_on_first_token: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self, choices: list[dict[str, Any]], chunk: bool = True) -> dict[str, Any]:
        kind = "text_completion"
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {
            "id": self.rid,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }

    def choice(self, text: str | None, finish: str | None, whole: bool = False) -> dict[str, Any]:
        """One choice: a delta (``text`` None: the empty finish delta), or the whole message."""
        out: dict[str, Any] = {"index": 0}
        if not self.chat:
            out = {"text": text or "", **out}
        elif whole:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["delta"] = {} if text is None else {"role": "assistant", "content": text}
        if self.logprobs:
            out["logprobs"] = None
        out["finish_reason"] = finish
        return out

    def stream_format(
        self,
        job: Job,
        content_type: str,
        usage: bool,
        error: Callable[[FaceError], Iterable[bytes]] | None = None,
    ) -> StreamFormat:
        def token(index: int, text: str, _last: bool) -> bytes:
            if index == 0 and self.created_on_first_token:
                self.created = int(time.time())
            return sse(self.envelope([self.choice(text, None)]))

        def tail() -> Iterable[bytes]:
            yield sse(self.envelope([self.choice(None, job.finish_reason)]))
            if usage:
                yield sse({**self.envelope([]), "usage": usage_of(job)})
            yield SSE_DONE

        return StreamFormat(content_type, token, tail=tail, error=error)

    def body(self, job: Job, text: str) -> dict[str, Any]:
        """The whole (non-streamed) answer with its usage."""
        whole = self.choice(text, job.finish_reason, whole=True)
        return {**self.envelope([whole], chunk=False), "usage": usage_of(job)}
