"""One record per routed request: timings, tokens, node, outcome; logged as one line
(:mod:`router.access_log`).

The stream is watched, not parsed: :class:`StreamWatch` looks at each relayed chunk with a few
byte searches (C speed) to time the first token and count content events, and reads the
``usage`` object when the backend sends one, so the relay stays lean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

_CONTENT = b'"content":"'
_EMPTY_CONTENT = b'"content":""'
_USAGE = b'"completion_tokens":'


@dataclass(slots=True)
class RequestRecord:
    group: str
    model: str
    endpoint: str
    tenant: str | None
    correlation_id: str
    stream: bool = False
    t_start: float = field(default_factory=time.perf_counter)
    node: str | None = None
    status: int = 0
    error: str | None = None
    attempts: int = 0
    failovers: int = 0
    t_upstream_sent: float | None = None
    t_upstream_headers: float | None = None
    t_headers_out: float | None = None
    t_first_token: float | None = None
    t_last_token: float | None = None
    t_end: float | None = None
    tokens: int = 0
    usage_tokens: int | None = None
    queue_wait_s: float = 0.0
    admitted: bool = False
    tail: bytes = b""  # the last bytes of a relayed stream

    @property
    def overhead_s(self) -> float | None:
        """Time the router itself added before the client got headers."""
        if self.t_headers_out is None:
            return None
        upstream = 0.0
        if self.t_upstream_sent is not None and self.t_upstream_headers is not None:
            upstream = self.t_upstream_headers - self.t_upstream_sent
        return max(0.0, self.t_headers_out - self.t_start - upstream - self.queue_wait_s)

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first_token is None else self.t_first_token - self.t_start

    @property
    def tpot_s(self) -> float | None:
        n = self.output_tokens
        if self.t_first_token is None or self.t_last_token is None or n < 2:
            return None
        return (self.t_last_token - self.t_first_token) / (n - 1)

    def watch(self, chunk: bytes, now: float) -> None:
        """Account one relayed stream chunk."""
        self.tail = chunk[-32:] if len(chunk) >= 32 else (self.tail + chunk)[-32:]
        found = chunk.count(_CONTENT)
        if found:
            tokens = found - chunk.count(_EMPTY_CONTENT)
            if tokens > 0:
                if self.t_first_token is None:
                    self.t_first_token = now
                self.t_last_token = now
                self.tokens += tokens
        if _USAGE in chunk:
            self._read_usage(chunk)

    def _read_usage(self, chunk: bytes) -> None:
        start = chunk.rfind(_USAGE) + len(_USAGE)
        digits = bytearray()
        for byte in chunk[start : start + 12]:
            if 48 <= byte <= 57:
                digits.append(byte)
            elif digits or byte not in b" ":
                break
        if digits:
            self.usage_tokens = int(digits)

    def take_body(self, body: bytes, now: float) -> None:
        """Account a whole (non-streamed) answer."""
        self.t_first_token = self.t_last_token = now
        if _USAGE in body:
            self._read_usage(body)  # a byte search, not a parse of the whole answer

    def fields(self) -> dict[str, object]:
        ttft = self.ttft_s
        end = self.t_end if self.t_end is not None else time.perf_counter()
        return {
            "correlation_id": self.correlation_id,
            "tenant": self.tenant,
            "group": self.group,
            "model": self.model,
            "endpoint": self.endpoint,
            "node": self.node,
            "status": self.status,
            "stream": self.stream,
            "attempts": self.attempts,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
            "duration_ms": round((end - self.t_start) * 1000, 2),
            "tokens": self.output_tokens,
            "error": self.error,
        }
