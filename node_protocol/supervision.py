"""Long-lived background tasks that fail loudly and come back.

A router's health monitor or an agent's report loop that died on an unexpected exception would
leave the process up and serving while its view of the fleet goes stale, with nothing in the
log. :class:`Supervised` runs such a loop as one task: an exception (or a return, which a loop
meant to run forever never does) is logged with its traceback and the loop is started again
after a delay that doubles with each failure in a row, up to ``Backoff.max_s``, and starts over
once a run lasted ``Backoff.healthy_s``. Its state (running or restarting), restart count and
last error are there for ``/ready``; each restart also counts in a Prometheus counter labelled
by task. Cancelling stops it cleanly wherever it is (running or waiting to restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("node_protocol.supervision")


class TaskState(StrEnum):
    IDLE = "idle"  # not started yet
    RUNNING = "running"
    RESTARTING = "restarting"  # failed; waiting out its backoff before the next run
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between restarts: ``first_s``, doubling per failure in a row up to ``max_s``; a
    run that lasted ``healthy_s`` or more before it failed starts the doubling over."""

    first_s: float = 0.5
    max_s: float = 30.0
    healthy_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s or self.healthy_s <= 0:
            raise ValueError("backoff needs 0 < first_s <= max_s and healthy_s > 0")


class Supervised:
    """One supervised loop: ``run`` is called again each time the previous call failed.

    ``name`` appears in the log and in ``/ready``; ``label`` (default: ``name``) is the value of
    the ``task`` label on ``restarts`` (keep it bounded: one per kind of task, not per peer).
    """

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        restarts: Counter | None = None,
        label: str | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._run = run
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._counter = None if restarts is None else restarts.labels(label or name)
        self.state = TaskState.IDLE
        self.restarts = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ok(self) -> bool:
        return self.state is TaskState.RUNNING

    def start(self) -> None:
        """Start the loop in a task of the running event loop (once)."""
        if self._task is None:
            self.state = TaskState.RUNNING
            self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self.state = TaskState.STOPPED

    async def __aenter__(self) -> Supervised:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def view(self) -> dict[str, Any]:
        """The task as ``/ready`` shows it."""
        return {"state": str(self.state), "restarts": self.restarts, "lastError": self.last_error}

    async def _supervise(self) -> None:
        delay = self._backoff.first_s
        while True:
            self.state = TaskState.RUNNING
            started = self._clock()
            try:
                await self._run()
            except Exception as exc:  # any failure of the loop: log it whole, then restart
                self.last_error = f"{type(exc).__name__}: {exc}"
                failure: BaseException | None = exc
            else:
                self.last_error = "it returned (a loop meant to run until stopped)"
                failure = None
            if self._clock() - started >= self._backoff.healthy_s:
                delay = self._backoff.first_s
            log.error(
                "task %s failed: %s; restarting in %.1fs",
                self.name,
                self.last_error,
                delay,
                exc_info=failure,
            )
            del failure  # its traceback holds the failed run's frames: not through the wait
            self.restarts += 1
            if self._counter is not None:
                self._counter.inc()
            self.state = TaskState.RESTARTING
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff.max_s)


def not_ready(tasks: Iterable[Supervised]) -> str | None:
    """Why these tasks do not make a ready process (the first one not running), else None."""
    for task in tasks:
        if not task.ok:
            error = f" after {task.last_error}" if task.last_error else ""
            return f"task {task.name} is {task.state}{error}"
    return None
