"""What a load report says of the backend and the GPUs, read in the background.

A backend that stops answering (a hung process, a server whose threads are all taken) must not
hold up the node's reports: the count of requests in flight in them is what the routers route
on, and it moves most when requests pile up at a backend that answers nothing. So a report waits
for a reading it started at most ``wait_s``, then goes out with what was last read, while the
reading goes on. Health, facts and GPUs land each on its own: the health check is one call with
its own timeout, while the facts take several calls one after another, so a backend that went
silent shows as unhealthy after one timeout, not after all of them. One reading at a time.

A backend that a probe would disturb (one with a
:attr:`~node_agent.backends.base.Backend.concurrency_limit`) is asked only in a free turn of its
:class:`~node_agent.gate.BackendGate`; while every turn is taken its last answer stands. The
first reading waits for a turn and for its answers: there is nothing to stand in for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from node_protocol.wire import GpuReport

from .backends.base import Backend, BackendFacts, Health
from .gate import BackendGate
from .gpu import GpuSource

log = logging.getLogger("node_agent.reporter")


@dataclass(frozen=True, slots=True)
class Reading:
    health: Health
    facts: BackendFacts
    gpus: tuple[GpuReport, ...]


class NodeProbe:
    """The backend's health and facts and the GPUs' state, last read (see the module doc)."""

    def __init__(self, backend: Backend, gpus: GpuSource, gate: BackendGate, wait_s: float):
        self._backend = backend
        self._gpus = gpus
        self._gate = gate
        self._wait_s = wait_s
        self._health: Health | None = None
        self._facts: BackendFacts | None = None
        self._gpu_reports: tuple[GpuReport, ...] = ()
        self._running: asyncio.Task[None] | None = None

    async def read(self) -> Reading:
        """Start a reading unless one runs, wait for it at most ``wait_s`` (the first one in
        full), and give what is known."""
        started = self._start() if self._running is None else None
        first = self._health is None or self._facts is None
        if first and self._running is not None:
            await asyncio.shield(self._running)
        elif started is not None:
            await asyncio.wait({started}, timeout=self._wait_s)
        if self._health is None or self._facts is None:
            raise RuntimeError("the backend's first probe failed (logged above)")
        return Reading(self._health, self._facts, self._gpu_reports)

    def _start(self) -> asyncio.Task[None]:
        turn = self._gate.spare()
        if turn is None and self._facts is None:
            turn = self._gate.hold()
        task = self._running = asyncio.create_task(self._read(turn))
        return task

    async def _read(self, turn: AbstractAsyncContextManager[object] | None) -> None:
        try:
            await asyncio.gather(self._ask_backend(turn), self._read_gpus())
        except Exception:  # a bug must not silence the node: log it, read again next time
            log.exception("reading the backend's state failed")
        finally:
            self._running = None

    async def _ask_backend(self, turn: AbstractAsyncContextManager[object] | None) -> None:
        if turn is None:
            return  # every turn taken: the last answer stands
        async with turn:
            await asyncio.gather(self._ask_health(), self._ask_facts())

    async def _ask_health(self) -> None:
        self._health = await self._backend.health()

    async def _ask_facts(self) -> None:
        self._facts = await self._backend.collect()

    async def _read_gpus(self) -> None:
        self._gpu_reports = await self._gpus.read()

    async def stop(self) -> None:
        """Cancel a reading under way (the agent is stopping)."""
        task = self._running
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
