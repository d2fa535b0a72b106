"""One raw record per benchmark request, as a JSON line; the error classes it may carry.

Times (defined in ``bench/metrics.py``): ``t_*`` are ``time.perf_counter()`` floats of the
process that sent the request, ``wall_send`` the same instant on the wall clock (to line up
records from several processes or machines), ``token_times`` the offsets (s) from ``t_send`` of
each chunk that carried a token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

# Error classes, in the order reports list them.
HTTP_429 = "http_429"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
CONNECTION = "connection"
TIMEOUT = "timeout"
CUT = "cut_mid_stream"
NO_DONE = "no_done"
STREAM_ERROR = "error_in_stream"
EMPTY = "empty"
ERROR_CLASSES = (
    HTTP_429,
    HTTP_4XX,
    HTTP_5XX,
    CONNECTION,
    TIMEOUT,
    CUT,
    NO_DONE,
    STREAM_ERROR,
    EMPTY,
)


def status_error(status: int) -> str | None:
    """The error class of an HTTP status, or None for a success."""
    if status == 429:
        return HTTP_429
    if status >= 500:
        return HTTP_5XX
    if status >= 400:
        return HTTP_4XX
    return None


@dataclass(slots=True)
class ClientRecord:
    """Everything measured about one request."""

    model: str
    entry: str
    max_tokens: int
    wall_send: float
    t_send: float
    t_headers: float | None = None
    t_first_event: float | None = None
    t_first_token: float | None = None
    t_last_token: float | None = None
    t_done: float | None = None
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_from: str = "usage"
    status: int = 0
    error: str | None = None
    detail: str | None = None
    node: str | None = None
    router_overhead_ms: float | None = None
    process: str = ""
    dispatch_lag_s: float | None = None

    @property
    def tokens(self) -> int:
        """Completion tokens: the usage figure, else one per token chunk."""
        return (
            self.completion_tokens if self.completion_tokens is not None else len(self.token_times)
        )

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first_token is None else self.t_first_token - self.t_send

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (N - 1), for N >= 2."""
        n = self.tokens
        if self.t_first_token is None or self.t_last_token is None or n < 2:
            return None
        return (self.t_last_token - self.t_first_token) / (n - 1)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientRecord:
        return cls(**data)
