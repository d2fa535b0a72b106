"""One record per routed request: timings, tokens, node, outcome; logged as one line
(:mod:`router.access_log`).

The answer is read as it is relayed by the reader the agent uses too
(:class:`node_protocol.events.AnswerReader`), for the surface the endpoint speaks: it times the
first and last tokens, counts them, and keeps the counts the backend sends (output, prompt,
cached prompt tokens) and whether the answer reached its own end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from node_protocol.events import AnswerReader, surface_of


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
    resumed: int = 0  # times a cut stream went on at another node
    t_upstream_sent: float | None = None
    t_upstream_headers: float | None = None
    t_headers_out: float | None = None
    t_end: float | None = None
    queue_wait_s: float = 0.0
    admitted: bool = False
    tail: bytes = b""  # the last bytes of a relayed stream
    answer: AnswerReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.answer = AnswerReader(surface_of(self.endpoint))

    @property
    def t_first_token(self) -> float | None:
        return self.answer.t_first_token

    @property
    def t_last_token(self) -> float | None:
        return self.answer.t_last_token

    @property
    def tokens(self) -> int:
        """Pieces of output seen in the stream."""
        return self.answer.tokens

    @property
    def usage_tokens(self) -> int | None:
        """The backend's exact output-token count, when it sent one."""
        return self.answer.usage_tokens

    @property
    def prompt_tokens(self) -> int | None:
        return self.answer.prompt_tokens

    @property
    def cached_tokens(self) -> int | None:
        """Prompt tokens the backend took from its cache, when it says."""
        return self.answer.cached_tokens

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
        return self.answer.output_tokens

    # The two below read the answer's fields straight: each is read at every request's end.
    @property
    def ttft_s(self) -> float | None:
        first = self.answer.t_first_token
        return None if first is None else first - self.t_start

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: only a stream's tokens come one by one (a
        whole answer's come at once, which says nothing of the time each took)."""
        if not self.stream:
            return None
        answer = self.answer
        first, last, n = answer.t_first_token, answer.t_last_token, answer.output_tokens
        if first is None or last is None or n < 2:
            return None
        return (last - first) / (n - 1)

    def watch(self, chunk: bytes, now: float) -> None:
        """Account one relayed stream chunk."""
        self.tail = chunk[-32:] if len(chunk) >= 32 else (self.tail + chunk)[-32:]
        self.answer.feed(chunk, now)

    def take_body(self, body: bytes, now: float) -> None:
        """Account a whole (non-streamed) answer."""
        self.answer.read_body(body, now)

    def close(self, now: float) -> None:
        """The request is over. A stream that was not cut ended with its body: a last line
        without its newline is read too, and an answer with no end marker is finished."""
        self.t_end = now
        if self.stream and self.error is None:
            self.answer.end(now)
