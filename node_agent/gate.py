"""The agent's hold on a backend that must not get more than a few requests at once.

A generic OpenAI-compatible server may cut its running request short when another arrives
(llama-cpp-python's server does, with no error: the stream just ends), and the agent's own
probes count as arrivals. For such a backend the adapter gives a concurrency limit; the agent
then has at most that many requests at the backend, holding the rest in arrival order until one
ends, and probes only in a turn that is free (else it keeps its last answer). The limit is read
from the adapter until it is known (auto-detection decides it only once the backend first
answers); it does not change after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

_OPEN: AbstractAsyncContextManager[None] = contextlib.nullcontext()


class BackendGate:
    """``async with gate.hold():`` around each request's whole exchange with the backend."""

    def __init__(self, limit: Callable[[], int | None]) -> None:
        self._limit = limit
        self._turns: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore | None:
        if self._turns is None:
            limit = self._limit()
            if limit is not None:
                self._turns = asyncio.Semaphore(limit)
        return self._turns

    def hold(self) -> AbstractAsyncContextManager[object]:
        """A request's turn at the backend: at once without a limit, else the next free one."""
        turns = self._semaphore()
        return _OPEN if turns is None else turns

    def spare(self) -> AbstractAsyncContextManager[object] | None:
        """A turn for a probe if one is free now (always without a limit), else None."""
        turns = self._semaphore()
        if turns is None:
            return _OPEN
        return None if turns.locked() else turns
