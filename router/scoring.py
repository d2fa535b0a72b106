"""The ``least_loaded`` score: seconds until a request would be served, lower is better.

For one candidate node::

    (2 * queue wait + model load + uncached prefill + DECODE_WEIGHT * decode time)
        * penalty / weight

where the queue wait is ``max(0, load + 1 - slots) / slots`` service times (counted twice: the
wait it makes later requests at the node wait too, :data:`QUEUE_COST`), a service time is
``expected_tokens`` at the node's per-stream decode speed with a full batch, and the decode time
is at the batch the request would join (per-stream speed falls as the batch grows). The
uncached prefill is the time the node would spend on the part of the prompt it has not cached
(0 where no prompt cache is known). Degraded and stale nodes are penalised.

:func:`score` is written once for a float and for a numpy column alike, so the scheduler's
per-row path (a handful of candidates) and its column path (a fleet) cannot drift apart, down
to the last bit: both run the very same operations in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Num = TypeVar("Num", float, FloatArray)


@dataclass(frozen=True, slots=True)
class ScoringParams:
    """Every constant the candidates and their scores are built with (router and simulator)."""

    default_slots: int = 4  # parallel slots assumed where a node does not say
    default_tok_s: float = 30.0  # per-stream decode speed assumed before any was measured
    default_load_s: float = 10.0  # model load time assumed when the size is unknown
    load_bytes_per_s: float = 1.5e9  # disk to VRAM, for a load-time estimate from the size
    load_base_s: float = 1.0
    expected_tokens: float = 256.0  # output tokens of a typical request: queue length to seconds
    batch_decay: float = 0.05  # how much each extra stream slows every stream
    decode_weight: float = 0.25  # share of the decode time in the score (TTFT first, then E2E)
    speed_noise: float = 0.5  # measured speeds this close to the median are taken as equal
    degraded_penalty: float = 1.5
    stale_penalty: float = 1.25
    evict_factor: float = 2.0  # a load that must evict another model first takes this much longer
    # Behind router replicas: a free slot in a report was freed by one replica, which saw it at
    # once and may have filled it since; the chance it is still free falls with the report's
    # age on this time scale (replicas-4 simulated over 8 seeds: 1 s and 2 s alike, none worse).
    refill_s: float = 2.0
    # Behind router replicas: queue the head waiter at the node that frees a slot soonest when
    # that wait is under this share of the time this replica's own queue takes to drain on its
    # own completions (its queue is not pooled with the others'; a node's queue is).
    pool_share: float = 0.5


DEFAULT_PARAMS = ScoringParams()

# A request that queues at a full node is not the only one to wait for it: each request that
# comes to that node while it is queued waits one more turn behind it. A full node takes about
# one new request per slot it frees, so the delay it passes on is about as long as its own
# wait, and the score counts both (a delay linear in the queue costs the fleet twice itself at
# the margin). Counting its own wait only, requests queued behind a node's prompt cache until
# the conversations whose caches were there found the node busy in turn: in the simulator's
# ``agentic`` scenario, p99 TTFT 1.92 s against 1.53 s (the clairvoyant: 1.60 s).
QUEUE_COST = 2.0


def positive(x: Num) -> Num:
    """``max(x, 0)`` of a float or of a column."""
    if isinstance(x, np.ndarray):
        return np.maximum(x, 0.0)
    return x if x > 0.0 else 0.0


def time_to_serve(load: Num, slots: Num, speed: Num, cold_s: Num, p: ScoringParams) -> Num:
    """The part of :func:`score` a node's load, speed and residency make: seconds of queue
    wait (counted twice, see :data:`QUEUE_COST`), model load and (weighted) decode, before
    the prefill, penalty and weight."""
    joined = load + 1.0
    over = positive(joined - slots)  # requests that would wait ahead of this one, and it
    service_full = p.expected_tokens * (1.0 + p.batch_decay * (slots - 1.0)) / speed
    wait = QUEUE_COST * over / slots * service_full
    decode = p.expected_tokens * (1.0 + p.batch_decay * (joined - over - 1.0)) / speed
    return wait + cold_s + p.decode_weight * decode


def score(
    load: Num,
    slots: Num,
    speed: Num,
    cold_s: Num,
    penalty: Num,
    weight: Num,
    prefill_s: Num | float,
    p: ScoringParams,
) -> Num:
    """Seconds until the request would be served at a node (see the module doc): ``speed`` is
    the per-stream decode speed at batch 1 (filled, see :func:`fill_speeds`), ``cold_s`` the
    model's load time there (0 when loaded), ``prefill_s`` the uncached prompt's prefill time."""
    return (time_to_serve(load, slots, speed, cold_s, p) + prefill_s) * penalty / weight


def service_s(slots: FloatArray, speed: FloatArray, p: ScoringParams) -> FloatArray:
    """Expected seconds one request holds a slot of a full batch, per row."""
    return p.expected_tokens * (1.0 + p.batch_decay * (slots - 1.0)) / speed


def fill_speeds(tok_s: FloatArray, p: ScoringParams) -> FloatArray:
    """Unknown speeds (NaN) become the mean of the known ones, or ``default_tok_s``; speeds
    within ``speed_noise`` of the median count as the median. Measured speeds of alike nodes
    differ by noise, and router replicas that all prefer the node that looked fastest in the
    last report herd onto it; another GPU class differs by far more."""
    unknown = np.isnan(tok_s)
    if unknown.any():
        known = tok_s[~unknown]
        fill = known.sum() / known.size if known.size else p.default_tok_s  # np.mean, cheaper
        tok_s = np.where(unknown, fill, tok_s)
    if tok_s.size < 2:
        return tok_s
    median = _median(tok_s)
    return np.where(np.abs(tok_s - median) <= p.speed_noise * median, median, tok_s)


def _median(x: FloatArray) -> float:
    """``np.median`` of a column without NaN, to the bit, at a fraction of its cost."""
    half = x.size // 2
    if x.size % 2:
        return float(np.partition(x, half)[half])
    low, high = np.partition(x, (half - 1, half))[half - 1 : half + 1]
    return float((low + high) / 2)


def fill_speed_list(tok_s: list[float], p: ScoringParams) -> list[float]:
    """:func:`fill_speeds` on a short list, with the same result to the bit (the mean of a
    partly known list is summed by numpy, whose order of summation differs from Python's)."""
    known = [s for s in tok_s if s == s]
    if len(known) < len(tok_s):
        fill = float(np.add.reduce(np.array(known)) / len(known)) if known else p.default_tok_s
        tok_s = [s if s == s else fill for s in tok_s]
    n = len(tok_s)
    if n < 2:
        return tok_s
    ordered = sorted(tok_s)
    half = n // 2
    median = ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2
    if ordered[0] == ordered[-1]:
        return tok_s  # all equal (all unknown, typically): each is the median already
    near = p.speed_noise * median
    return [median if abs(s - median) <= near else s for s in tok_s]


def load_time_s(size_bytes: int | None, p: ScoringParams = DEFAULT_PARAMS) -> float:
    """Estimated seconds to load a model of this size from disk into VRAM."""
    if not size_bytes:
        return p.default_load_s
    return p.load_base_s + size_bytes / p.load_bytes_per_s
