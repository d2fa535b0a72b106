"""Request streams: Poisson arrivals, mixed and heavy-tailed lengths, tenants and sessions.

Everything is drawn up front with numpy from a seed, so every policy sees the very same
requests. Work is measured in decoded-token equivalents: ``output + prompt / PREFILL_RATIO``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench.sim.cluster import PREFILL_RATIO

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Stream:
    """One tenant's traffic: rate (requests/s), model mix, length shape, sessions."""

    rate: float
    models: Sequence[str]
    mix: Sequence[float]
    lengths: str = "mixed"  # "mixed" (chat + long documents) or "heavy" (Pareto outputs)
    tenant: int = 0
    sessions: int = 0  # > 0: requests belong to this many sessions (Zipf popularity)


@dataclass(slots=True)
class Turns:
    """Requests that are turns of conversations (:mod:`bench.sim.agentic`): each prompt is its
    conversation's text so far, a leading run of the conversation's chain of blocks
    (:mod:`bench.sim.prefix`), and a turn after the first arrives ``think`` seconds after the
    previous turn's answer ended (its arrival is not drawn up front)."""

    conv: Ints  # the conversation: an index into ``chains``
    blocks: Ints  # the prompt's whole blocks
    kept: Ints  # whole blocks of prompt and answer: what the engine holds once it answered
    after: Ints  # the previous turn's request, -1 for a first turn
    think: Floats  # seconds from the previous turn's end to this turn
    chains: list[list[int]]  # per conversation, the chain ids of all its blocks


@dataclass(slots=True)
class Requests:
    """Columns, sorted by arrival time (turns after the first: NaN, see :class:`Turns`)."""

    arrival: Floats
    model: Ints
    tenant: Ints
    session: Ints  # -1: none
    prompt: Floats
    output: Floats
    turns: Turns | None = None  # None: no request shares a prompt prefix with another

    def __len__(self) -> int:
        return int(self.arrival.size)


def lengths(kind: str, n: int, rng: np.random.Generator) -> tuple[Floats, Floats]:
    """Prompt and output token counts."""
    if kind == "heavy":
        prompt = np.minimum(rng.lognormal(np.log(600), 1.0, n), 16000)
        output = np.minimum(40.0 * (rng.pareto(1.6, n) + 1.0), 4096)
        return np.round(prompt).astype(np.float64), np.round(output).astype(np.float64)
    long = rng.random(n) < 0.2
    prompt = np.where(long, rng.lognormal(np.log(3000), 0.5, n), rng.lognormal(np.log(400), 0.8, n))
    output = np.where(long, rng.lognormal(np.log(500), 0.5, n), rng.lognormal(np.log(150), 0.6, n))
    prompt = np.round(np.minimum(prompt, 16000))
    output = np.maximum(1.0, np.round(np.minimum(output, 4096)))
    return prompt.astype(np.float64), output.astype(np.float64)


def mean_work(kind: str, seed: int = 99) -> float:
    """Mean work units of one request of this length shape."""
    prompt, output = lengths(kind, 200_000, np.random.default_rng(seed))
    return float((output + prompt / PREFILL_RATIO).mean())


def generate(
    streams: Sequence[Stream], duration: float, model_ids: dict[str, int], seed: int
) -> Requests:
    """Every stream's requests over ``duration`` seconds, merged by arrival time. A stream's
    draws depend only on the seed, the duration and the streams before it."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[Floats, Ints, Ints, Ints, Floats, Floats]] = []
    for s in streams:
        arrival = np.cumsum(rng.exponential(1.0 / s.rate, int(s.rate * duration * 1.1) + 10))
        arrival = arrival[arrival < duration]
        n = arrival.size
        mix = np.asarray(s.mix, dtype=np.float64)
        ids = np.array([model_ids[m] for m in s.models], dtype=np.int64)
        model = ids[rng.choice(len(s.models), size=n, p=mix / mix.sum())]
        session = np.full(n, -1, dtype=np.int64)
        if s.sessions:  # a session keeps to one model
            session = (rng.zipf(1.3, n) - 1) % s.sessions + s.tenant * 1_000_000
            model = ids[session % len(s.models)]
        prompt, output = lengths(s.lengths, n, rng)
        tenant = np.full(n, s.tenant, dtype=np.int64)
        parts.append((arrival, model, tenant, session, prompt, output))
    arrival, model, tenant, session, prompt, output = (
        np.concatenate([p[i] for p in parts]) for i in range(6)
    )
    order = np.argsort(arrival, kind="stable")
    return Requests(
        arrival[order], model[order], tenant[order], session[order], prompt[order], output[order]
    )
