"""Counters the proxy keeps and the reporter reads: requests in flight and output tokens.

Kept deliberately cheap (plain int arithmetic on the proxy path); the reporter turns the token
total into a rate over a sliding window of its own samples. :class:`AnswerTokens` adds one
relayed answer's tokens to the total as they pass.

Requests in flight are also counted per model where each model has slots of its own (Ollama's
``OLLAMA_NUM_PARALLEL`` is per loaded model, LM Studio's ``parallel`` per loaded instance,
Triton's instances per model), under the id the backend reports the model by
(:meth:`TrafficStats.model_key`), so a router's slot check compares one model's count with that
model's slots. Where one engine's slots serve every model it lists (vLLM's base model and its
LoRA adapters, TGI, llama.cpp), all requests count together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from urllib.parse import unquote

import orjson

from node_protocol.events import AnswerReader, Surface
from node_protocol.wire import ModelReport

_PATH_MODEL = "/v2/models/"  # KServe v2 (Triton) names the model in the path
SHARED = "*"  # the key of every request where the models share the backend's slots


def request_model(path: str, body: bytes | None) -> str | None:
    """The model a backend request names: in a ``/v2/models/{m}/...`` path, else the body's
    ``model`` field; None when it names none (or the body is not a JSON object)."""
    if path.startswith(_PATH_MODEL):
        return unquote(path[len(_PATH_MODEL) :].partition("/")[0].partition("?")[0])
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


# A bigger whole (non-streamed) answer is relayed unread: only a header may count its tokens.
MAX_BODY_READ = 1024 * 1024


class TrafficStats:
    """Exact in-flight counts (all, and per model), a running output-token total and a
    'something changed' hint."""

    __slots__ = (
        "_busy_s",
        "_busy_since",
        "_by_model",
        "_failed",
        "_in_flight",
        "_keys",
        "_shared",
        "changed",
        "output_tokens",
        "requests_total",
    )

    def __init__(self) -> None:
        self._in_flight = 0
        # Request-seconds in flight until _busy_since: over an interval, their growth over its
        # length is the mean number in flight, which the interval's token rate is divided by.
        self._busy_s = 0.0
        self._busy_since = time.monotonic()
        self._by_model: dict[str, int] = {}
        self._keys: dict[str, str] = {}  # every name of a model the backend has -> its id
        self._shared = True  # every request counts under SHARED (until models are known)
        self._failed = False
        self.output_tokens = 0
        self.requests_total = 0
        # Set by the proxy when the backend's state may have changed (a request finished, so a
        # model may have loaded, or the backend failed); the reporter may then look at once
        # instead of at its next tick.
        self.changed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def busy_seconds(self, now: float) -> float:
        """Request-seconds spent in flight so far (``now``: monotonic)."""
        return self._busy_s + self._in_flight * max(0.0, now - self._busy_since)

    def _settle(self) -> None:
        now = time.monotonic()
        self._busy_s = self.busy_seconds(now)
        self._busy_since = now

    def in_flight_for(self, key: str) -> int:
        """Requests in flight for the model counted under ``key`` (see :meth:`model_key`):
        ``SHARED`` counts every request; a model's count includes those that came in under
        ``SHARED`` (before the backend's models were known, or while they shared the slots)."""
        if key == SHARED:
            return self._in_flight
        return self._by_model.get(key, 0) + self._by_model.get(SHARED, 0)

    def know_models(self, models: Iterable[ModelReport], *, slots_per_model: bool) -> None:
        """The backend's models as its latest report lists them (names and aliases), and
        whether each has slots of its own (else one engine's slots serve them all)."""
        keys: dict[str, str] = {}
        for entry in models:
            for name in (entry.id, *entry.aliases):
                keys.setdefault(name, entry.id)
        self._keys = keys
        self._shared = not slots_per_model or len(set(keys.values())) < 2

    def model_key(self, path: str, body: bytes | None) -> str:
        """The key a request for ``path`` with ``body`` is counted under: ``SHARED`` where the
        models share the slots, or there is one (the body is not even read); else the id the
        backend reports the request's model by, or the name asked for, "" for none."""
        if self._shared:
            return SHARED
        name = request_model(path, body)
        return "" if name is None else self._keys.get(name, name)

    def enter(self, key: str) -> None:
        self._settle()
        self._in_flight += 1
        self._by_model[key] = self._by_model.get(key, 0) + 1
        self.requests_total += 1

    def leave(self, key: str) -> None:
        """The end of a request :meth:`enter` counted under ``key``."""
        self._settle()
        if self._in_flight > 0:
            self._in_flight -= 1
        left = self._by_model.get(key, 0) - 1
        if left > 0:
            self._by_model[key] = left
        else:
            self._by_model.pop(key, None)

    def hint(self, *, failure: bool) -> None:
        """A request ended; ``failure`` when the backend failed it (unreachable, 5xx, cut)."""
        if failure:
            self._failed = True
        self.changed.set()

    def take_failure(self) -> bool:
        """Whether a failure was hinted since the last call."""
        failed, self._failed = self._failed, False
        return failed

    def add_tokens(self, count: int) -> None:
        self.output_tokens += count


class TokenRate:
    """Output tokens per second over a sliding window of (time, total) samples (or any other
    running total: request-seconds in flight give the mean number in flight)."""

    __slots__ = ("_samples", "_window_s")

    def __init__(self, window_s: float = 10.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def sample(self, now: float, total: float) -> float | None:
        """Record the running total at ``now`` (monotonic) and return the windowed rate.

        None when nothing was generated in the window: an idle node's speed is unknown, not 0.
        """
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        first_t, first_total = self._samples[0]
        elapsed = now - first_t
        produced = total - first_total
        if elapsed <= 0 or produced <= 0:
            return None
        return produced / elapsed


class AnswerTokens:
    """One relayed answer's output tokens, added to the stats as they come: a stream's pieces
    as they pass (corrected once the backend sends its exact count), a whole answer's exact
    count (else the ``x-generated-tokens`` header TGI sends) at its end."""

    __slots__ = ("_added", "_body", "_stats", "_streamed", "reader")

    def __init__(self, stats: TrafficStats, surface: Surface, *, streamed: bool) -> None:
        self.reader = AnswerReader(surface)
        self._stats = stats
        self._streamed = streamed
        self._added = 0
        self._body: bytearray | None = None
        if not streamed and surface is not Surface.NONE:
            self._body = bytearray()

    def take(self, chunk: bytes) -> None:
        """One relayed piece of the answer."""
        if self._streamed:
            self.reader.feed(chunk, time.perf_counter())
            self._settle()
        elif self._body is not None:
            if len(self._body) + len(chunk) <= MAX_BODY_READ:
                self._body += chunk
            else:
                self._body = None

    def end(self, generated_header: int | None) -> None:
        """The answer was relayed to its end."""
        reader = self.reader
        if self._streamed:
            reader.end(time.perf_counter())
        elif self._body is not None:
            reader.read_body(bytes(self._body), time.perf_counter())
        if not self._streamed and reader.usage_tokens is None and generated_header is not None:
            self._stats.add_tokens(generated_header - self._added)
            self._added = generated_header
        else:
            self._settle()

    def _settle(self) -> None:
        total = self.reader.output_tokens
        if total != self._added:
            self._stats.add_tokens(total - self._added)
            self._added = total
