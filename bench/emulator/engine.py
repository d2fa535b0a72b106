"""The simulated GPU box: models resident in VRAM, parallel slots, queues and token timing.

No HTTP here. A face calls :meth:`Engine.admit` (which may raise :class:`EngineBusy`), then
inside ``async with job`` awaits :meth:`Job.ready` (load the model if needed, then wait for a
slot) and iterates :meth:`Job.tokens`. Leaving the ``async with`` (normally, by an error or by
cancellation) gives the slot back; a job that leaves before its last token counts as cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import suppress
from types import TracebackType
from typing import Any

from router.wire import GpuReport

from .capacity import ModelSpec
from .config import EmulatorConfig
from .faults import Fault
from .gpus import GpuPool, gib_to_bytes, per_gpu_bytes
from .slots import SlotGate
from .tokens import token_text

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_TOKENS = 16
KV_TOKENS_PER_SLOT = 2048  # KV-cache room per slot, for vllm:kv_cache_usage_perc
LATE_SLACK_S = 0.01  # lateness the token schedule catches up on; beyond it, it restarts


class EngineBusy(Exception):
    """The wait queue is full (Ollama's 503 ``server busy``)."""


class ModelState:
    """One served model: where it sits in VRAM, its slots and its keep-alive timer."""

    def __init__(self, spec: ModelSpec, config: EmulatorConfig) -> None:
        self.spec = spec
        self.tok_s = config.tok_s or spec.cls.mid_tok_s
        self.gate = SlotGate(config.slots or spec.cls.slots)
        self.keep_alive_s = config.keep_alive_s if config.kind == "ollama" else -1.0
        self.where: tuple[int, ...] | None = None  # GPUs reserved (loading or loaded)
        self.loaded = False
        self.load_task: asyncio.Task[None] | None = None
        self.refs = 0  # admitted requests not yet finished
        self.waiting = 0  # admitted requests without a slot yet
        self.kv_tokens = 0
        self.last_used = time.monotonic()
        self.expires_at: float | None = None  # monotonic; None = never (or busy)
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def idle(self) -> bool:
        return self.loaded and self.refs == 0 and self.load_task is None

    def rate(self) -> float:
        """Per-stream decode rate at the current batch size."""
        batch = max(1, self.gate.busy)
        return self.tok_s / (1 + self.spec.cls.batch_decay * (batch - 1))

    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / (self.gate.capacity * KV_TOKENS_PER_SLOT))

    def expiry_deadline(self) -> float | None:
        """Monotonic time the keep-alive lapses (counted from now while busy); None = never."""
        if self.keep_alive_s < 0:
            return None
        if self.refs > 0 or self.expires_at is None:
            return time.monotonic() + self.keep_alive_s
        return self.expires_at


class Engine:
    """Everything one emulated box knows; shared by its HTTP faces."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.gpus = GpuPool(config.gpu_name, [gib_to_bytes(g) for g in config.gpu_memory_gb])
        self.models = {spec.name: ModelState(spec, config) for spec in config.specs}
        self.fault = Fault()
        self.started_unix = time.time()  # wall clock, shown as Ollama's modified_at
        self.waiting = 0
        self.cancelled = 0
        self.completed = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: Counter[str] = Counter()
        self._room: list[asyncio.Future[None]] = []
        for name in config.start_loaded:
            st = self.models[name]
            st.where = self.gpus.reserve(st.spec)
            st.loaded = st.where is not None

    async def start(self) -> None:
        """Start keep-alive timers of the models loaded at start (needs the running loop)."""
        for st in self.models.values():
            if st.loaded:
                self._became_idle(st)

    async def close(self) -> None:
        tasks = [st.load_task for st in self.models.values() if st.load_task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        for st in self.models.values():
            if st.expiry is not None:
                st.expiry.cancel()
        for fut in self._room:
            fut.cancel()

    # ---- requests -------------------------------------------------------------------------

    def admit(
        self,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        keep_alive_s: float | None = None,
    ) -> Job:
        """Register a request; raises :class:`EngineBusy` when it would have to wait and the
        wait queue is full."""
        st = self.models[model]
        limit = self.config.queue_limit
        if (
            limit is not None
            and self.waiting >= limit
            and not (st.loaded and st.gate.can_enter_now())
        ):
            raise EngineBusy(model)
        return Job(self, st, prompt_tokens, max_tokens, keep_alive_s)

    async def preload(self, model: str, keep_alive_s: float | None) -> float:
        """Load ``model`` without running anything (Ollama's empty request); returns seconds
        spent loading."""
        st = self.models[model]
        self.hold(st, keep_alive_s)
        try:
            return await self.ensure_loaded(st)
        finally:
            self.unhold(st)

    def unload(self, model: str) -> None:
        """Unload now if idle, else as soon as the last request finishes (keep_alive 0)."""
        st = self.models[model]
        st.keep_alive_s = 0.0
        if st.idle:
            self._unload(st)

    def hold(self, st: ModelState, keep_alive_s: float | None) -> None:
        """A request starts using ``st``: it may not be evicted and its keep-alive pauses."""
        st.refs += 1
        if keep_alive_s is not None and self.config.kind == "ollama":
            st.keep_alive_s = keep_alive_s
        if st.expiry is not None:
            st.expiry.cancel()
            st.expiry = None
        st.expires_at = None

    def unhold(self, st: ModelState) -> None:
        """A request is done with ``st``; the last one out starts the keep-alive."""
        st.refs -= 1
        st.last_used = time.monotonic()
        if st.refs == 0 and st.loaded:
            self._became_idle(st)
        if st.refs == 0:
            self._wake_room_waiters()

    # ---- residency ------------------------------------------------------------------------

    async def ensure_loaded(self, st: ModelState) -> float:
        """Load ``st`` if needed (one load shared by all who wait); returns seconds waited."""
        started = time.monotonic()
        while not st.loaded:
            if st.load_task is None:
                st.load_task = asyncio.create_task(self._load(st), name=f"load {st.name}")
            await asyncio.shield(st.load_task)
        return time.monotonic() - started

    async def _load(self, st: ModelState) -> None:
        try:
            while (where := self._make_room(st)) is None:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._room.append(fut)
                await fut
            st.where = where
            log.info("loading %s on GPU(s) %s", st.name, where)
            await asyncio.sleep(st.spec.cls.load_s * self.config.load_time_scale)
            st.loaded = True
            st.last_used = time.monotonic()
        except BaseException:
            if st.where is not None and not st.loaded:
                self.gpus.release(st.spec, st.where)
                st.where = None
            raise
        finally:
            st.load_task = None
        if st.refs == 0:
            self._became_idle(st)

    def _make_room(self, st: ModelState) -> tuple[int, ...] | None:
        """Reserve VRAM for ``st``, evicting idle models least recently used first."""
        while True:
            resident = sum(1 for m in self.models.values() if m.where is not None)
            if resident < self.config.max_loaded:
                where = self.gpus.reserve(st.spec)
                if where is not None:
                    return where
            idle = [m for m in self.models.values() if m.idle and m is not st]
            if not idle:
                return None
            self._unload(min(idle, key=lambda m: m.last_used))

    def _unload(self, st: ModelState) -> None:
        if st.where is not None:
            self.gpus.release(st.spec, st.where)
        log.info("unloading %s", st.name)
        st.where, st.loaded, st.expires_at = None, False, None
        if st.expiry is not None:
            st.expiry.cancel()
            st.expiry = None
        self._wake_room_waiters()

    def _became_idle(self, st: ModelState) -> None:
        if st.keep_alive_s == 0:
            self._unload(st)
        elif st.keep_alive_s > 0:
            st.expires_at = time.monotonic() + st.keep_alive_s
            loop = asyncio.get_running_loop()
            st.expiry = loop.call_later(st.keep_alive_s, self._expire, st)

    def _expire(self, st: ModelState) -> None:
        st.expiry = None
        if st.idle:
            self._unload(st)

    def _wake_room_waiters(self) -> None:
        room, self._room = self._room, []
        for fut in room:
            if not fut.done():
                fut.set_result(None)

    # ---- reports --------------------------------------------------------------------------

    def gpu_reports(self) -> list[GpuReport]:
        busy: dict[int, tuple[int, int]] = {}
        for st in self.models.values():
            for i in st.where or ():
                running, slots = busy.get(i, (0, 0))
                busy[i] = (running + st.gate.busy, slots + st.gate.capacity)
        return self.gpus.reports(busy)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        models = []
        for st in self.models.values():
            deadline = st.expiry_deadline()
            models.append(
                {
                    "name": st.name,
                    "class": st.spec.cls.name,
                    "loaded": st.loaded,
                    "loading": st.load_task is not None,
                    "gpus": list(st.where or ()),
                    "vramBytesPerGpu": per_gpu_bytes(st.spec),
                    "slots": st.gate.capacity,
                    "running": st.gate.busy,
                    "waiting": st.waiting,
                    "tokS": st.tok_s,
                    "keepAliveS": st.keep_alive_s,
                    "expiresInS": (
                        round(deadline - now, 3) if st.loaded and deadline is not None else None
                    ),
                }
            )
        return {
            "kind": self.config.kind,
            "fault": self.fault.to_json(),
            "waiting": self.waiting,
            "queueLimit": self.config.queue_limit,
            "cancelled": self.cancelled,
            "completed": self.completed,
            "models": models,
        }


class Job:
    """One admitted request, from the wait queue to its last token."""

    def __init__(
        self,
        engine: Engine,
        st: ModelState,
        prompt_tokens: int,
        max_tokens: int | None,
        keep_alive_s: float | None,
    ) -> None:
        self.engine = engine
        self.model = st
        self.prompt_tokens = prompt_tokens
        self.output_tokens = DEFAULT_OUTPUT_TOKENS if max_tokens is None else max(0, max_tokens)
        self.finish_reason = "stop" if max_tokens is None else "length"
        self.generated = 0
        self.admitted_at = time.monotonic()
        self.load_s = 0.0
        self.slot_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.done = False
        self._closed = False
        engine.hold(st, keep_alive_s)
        engine.waiting += 1
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
        """Wait for the model to be loaded and for a slot."""
        self.load_s = await self.engine.ensure_loaded(self.model)
        await self.model.gate.acquire()
        self.slot_at = time.monotonic()
        self._leave_queue()
        self.model.kv_tokens += self.prompt_tokens
        self.engine.prompt_tokens_total += self.prompt_tokens

    async def tokens(self) -> AsyncGenerator[str, None]:
        """Yield each output token at its own time: prefill first, then one per 1/rate."""
        if self.slot_at is None:
            raise RuntimeError("ready() must complete before tokens()")
        due = self.slot_at + self.engine.config.ttft_s * self.engine.fault.delay_factor
        try:
            for i in range(self.output_tokens):
                due = await _sleep_until(due)
                self.last_token_at = time.monotonic()
                if i == 0:
                    self.first_token_at = self.last_token_at
                self.generated += 1
                self.model.kv_tokens += 1
                self.engine.generation_tokens_total += 1
                yield token_text(i)
                due += self.engine.fault.delay_factor / self.model.rate()
            if self.output_tokens == 0:
                await _sleep_until(due)
            self.done = True
        finally:
            self.close()

    def close(self) -> None:
        """Give back the slot (or the queue place); idempotent."""
        if self._closed:
            return
        self._closed = True
        engine, st = self.engine, self.model
        if self.slot_at is None:
            self._leave_queue()
        else:
            st.kv_tokens -= self.prompt_tokens + self.generated
            st.gate.release()
        if self.done:
            engine.completed += 1
            engine.finished[self.finish_reason] += 1
        else:
            engine.cancelled += 1
            engine.finished["abort"] += 1
        engine.unhold(st)

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
