"""The agent's hold on a backend that must not get more than a few requests at once.

A generic OpenAI-compatible server may cut its running request short when another arrives
(llama-cpp-python's server does, with no error: the stream just ends). For such a backend the
adapter gives a concurrency limit; the agent then has at most that many requests at the backend
and holds the rest, in arrival order, until one ends. The limit is read from the adapter on each
request until it is known (auto-detection decides it only once the backend first answers); it
does not change after.
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

    def hold(self) -> AbstractAsyncContextManager[object]:
        """The request's turn at the backend: at once without a limit, else a free one."""
        if self._turns is None:
            limit = self._limit()
            if limit is None:
                return _OPEN
            self._turns = asyncio.Semaphore(limit)
        return self._turns
