"""One admitted request, from the wait queue to its last token, on the engine's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from .residency import ModelState
from .tokens import token_text

if TYPE_CHECKING:
    from .engine import Engine

DEFAULT_OUTPUT_TOKENS = 16
LATE_SLACK_S = 0.01  # lateness the token schedule catches up on; beyond it, it restarts


class Job:
    """One request: ``async with job``, await :meth:`ready` (load, then a slot), then iterate
    :meth:`tokens`. Leaving the block gives the slot back; leaving early counts as cancelled.

    ``errored`` is set by a face that ended the answer with an error (an injected fault).
    A face that keeps a prompt cache sets ``cached_tokens`` from ``on_slot`` (called once the
    job holds a slot; it may raise to refuse the job there): only the uncached part of the
    prompt costs prefill time. ``on_first_token`` is called as the first token comes out.
    ``decode_steps`` adds up this job's share of each decode step (1 / streams in the batch).
    ``first``: the model's words it goes on from (:mod:`.continuation`); with no cap the
    answer stops where an uncontinued one would have.
    """

    def __init__(
        self,
        engine: Engine,
        st: ModelState,
        prompt_tokens: int,
        max_tokens: int | None,
        keep_alive_s: float | None,
        first: int = 0,
    ) -> None:
        self.engine = engine
        self.model = st
        self.prompt_tokens = prompt_tokens
        self.first = first
        natural = max(0, DEFAULT_OUTPUT_TOKENS - first)
        self.output_tokens = natural if max_tokens is None else max(0, max_tokens)
        self.finish_reason = "stop" if max_tokens is None else "length"
        self.generated = 0
        self.admitted_at = time.monotonic()
        self.load_s = 0.0
        self.slot_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.ended_at: float | None = None
        self.done = False
        self.errored = False
        self.cached_tokens = 0
        self.decode_steps = 0.0
        self.on_slot: Callable[[Job], None] | None = None
        self.on_first_token: Callable[[Job], None] | None = None
        self._closed = False
        engine.residency.hold(st, keep_alive_s)
        engine.waiting += 1
        engine.in_flight += 1
        st.waiting += 1

    async def __aenter__(self) -> Job:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def ready(self) -> None:
        """Wait for the model to be loaded (on demand where the backend does that) and for a
        slot; raises :class:`~.residency.LoadFailed` when the model cannot be placed."""
        self.load_s = await self.engine.residency.ensure_loaded(self.model)
        await self.model.gate.acquire()
        self.slot_at = time.monotonic()
        self._leave_queue()
        self.model.kv_tokens += self.prompt_tokens
        self.engine.prompt_tokens_total += self.prompt_tokens
        if self.on_slot is not None:
            self.on_slot(self)

    def prefill_s(self) -> float:
        """Time to the first token once a slot is held: the fixed TTFT, plus the uncached
        prompt at the prefill rate where one is set."""
        config = self.engine.config
        if config.prefill_tok_s is None:
            return config.ttft_s
        return config.ttft_s + (self.prompt_tokens - self.cached_tokens) / config.prefill_tok_s

    async def tokens(self) -> AsyncGenerator[str, None]:
        """Yield each output token at its own time: prefill first, then one per 1/rate."""
        if self.slot_at is None:
            raise RuntimeError("ready() must complete before tokens()")
        due = self.slot_at + self.prefill_s() * self.engine.fault.delay_factor
        try:
            for i in range(self.output_tokens):
                due = await _sleep_until(due)
                self.last_token_at = time.monotonic()
                if i == 0:
                    self.first_token_at = self.last_token_at
                    if self.on_first_token is not None:
                        self.on_first_token(self)
                self.generated += 1
                self.decode_steps += 1.0 / max(1, self.model.gate.busy)
                self.model.kv_tokens += 1
                self.engine.generation_tokens_total += 1
                yield token_text(self.first + i)
                due += self.engine.fault.delay_factor / self.model.rate()
            if self.output_tokens == 0:
                await _sleep_until(due)
            self.done = True
        finally:
            self.close()

    async def run_to_end(self) -> None:
        """Load, take a slot and run every token (a prefill-only job for embeddings)."""
        await self.ready()
        async for _ in self.tokens():
            pass

    def close(self) -> None:
        """Give back the slot (or the queue place); idempotent."""
        if self._closed:
            return
        self._closed = True
        self.ended_at = time.monotonic()
        engine, st = self.engine, self.model
        if self.slot_at is None:
            self._leave_queue()
        else:
            st.kv_tokens -= self.prompt_tokens + self.generated
            st.gate.release()
        engine.in_flight -= 1
        if self.done:
            engine.completed += 1
            engine.finished[self.finish_reason] += 1
        else:
            engine.cancelled += 1
            engine.finished["abort"] += 1
        engine.residency.unhold(st)
        for listener in engine.listeners:
            listener(self)

    def _leave_queue(self) -> None:
        self.engine.waiting -= 1
        self.model.waiting -= 1


async def _sleep_until(deadline: float) -> float:
    """Sleep until ``deadline``; return the deadline the schedule goes on from.

    Small lateness (timer resolution, a busy loop) is caught up on the next tokens so the rate
    stays exact; after a longer stall the schedule restarts from now, as a GPU that stalled
    does not then produce a burst of tokens.
    """
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    now = time.monotonic()
    return now if now - deadline > LATE_SLACK_S else deadline
