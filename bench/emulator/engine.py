"""The simulated GPU box: models resident in VRAM, parallel slots, queues and token timing.

No HTTP here. A face calls :meth:`Engine.admit` (which may raise :class:`EngineBusy`), then
inside ``async with job`` awaits :meth:`Job.ready` (load the model if needed, then wait for a
slot) and iterates :meth:`Job.tokens`. Leaving the ``async with`` (normally, by an error or by
cancellation) gives the slot back; a job that leaves before its last token counts as cancelled.
Where models live (load, evict, keep-alive) is :mod:`.residency`'s job; faces that keep their
own statistics (TGI, Triton metrics) subscribe to finished jobs through :attr:`listeners`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from node_protocol.wire import GpuReport

from .config import EmulatorConfig
from .faults import Fault
from .gpus import GpuPool, gib_to_bytes, per_gpu_bytes
from .job import Job
from .residency import ModelState, Residency

KV_TOKENS_PER_SLOT = 2048  # KV-cache room per slot (vLLM's KV usage, TGI's token budget)


class EngineBusy(Exception):
    """The queue bound is hit (Ollama's 503 ``server busy``, TGI's 429, Triton's rejection)."""


class Engine:
    """Everything one emulated box knows; shared by its HTTP faces."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.policy = config.policy
        self.gpus = GpuPool(config.gpu_name, [gib_to_bytes(g) for g in config.gpu_memory_gb])
        self.models = {spec.name: ModelState(spec, config) for spec in config.specs}
        self.residency = Residency(self.policy, self.gpus, self.models, config.load_time_scale)
        self.residency.place_at_start(config.start_loaded)
        self.fault = Fault()
        self.started_unix = time.time()  # wall clock, shown as Ollama's modified_at
        self.waiting = 0
        self.in_flight = 0
        self.cancelled = 0
        self.completed = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: Counter[str] = Counter()
        self.listeners: list[Callable[[Job], None]] = []

    async def start(self) -> None:
        await self.residency.start()

    async def close(self) -> None:
        await self.residency.close()

    # ---- requests -------------------------------------------------------------------------

    def admit(
        self,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        keep_alive_s: float | None = None,
        continues: int = 0,
    ) -> Job:
        """Register a request; raises :class:`EngineBusy` when the backend's queue bound is hit
        (a request that can start at once never waits, so it is never refused for waiting).
        ``continues``: the model's words the answer goes on from (:mod:`.continuation`)."""
        st = self.models[model]
        limit = self.policy.queue_limit
        if limit is not None:
            scope = self.policy.queue_scope
            if scope == "in_flight":
                busy = self.in_flight >= limit
            else:
                waiting = st.waiting if scope == "model" else self.waiting
                busy = waiting >= limit and not (st.loaded and st.gate.can_enter_now())
            if busy:
                raise EngineBusy(model)
        return Job(self, st, prompt_tokens, max_tokens, keep_alive_s, continues)

    async def load(self, model: str, keep_alive_s: float | None = None) -> float:
        """Load ``model`` through an API (Triton's, LM Studio's) without running anything;
        returns the seconds spent loading. Raises :class:`~.residency.LoadFailed`."""
        return await self._load(model, keep_alive_s, explicit=True)

    async def preload(self, model: str, keep_alive_s: float | None) -> float:
        """Load ``model`` as a request would (Ollama's empty request); returns the seconds
        spent loading."""
        return await self._load(model, keep_alive_s, explicit=False)

    async def _load(self, model: str, keep_alive_s: float | None, explicit: bool) -> float:
        st = self.models[model]
        self.residency.hold(st, keep_alive_s)
        try:
            return await self.residency.ensure_loaded(st, explicit)
        finally:
            self.residency.unhold(st)

    def unload(self, model: str) -> None:
        """Unload now if idle, else as soon as the last request finishes."""
        self.residency.unload(self.models[model])

    # ---- reports --------------------------------------------------------------------------

    def kv_usage(self, st: ModelState) -> float:
        return min(1.0, st.kv_tokens / self.kv_capacity(st))

    def kv_capacity(self, st: ModelState) -> int:
        return st.gate.capacity * KV_TOKENS_PER_SLOT

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
                    "unloading": st.unloading,
                    "jit": st.jit,
                    "pinned": st.pinned,
                    "loadError": st.load_error,
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
            "inFlight": self.in_flight,
            "queueLimit": self.config.queue_limit,
            "cancelled": self.cancelled,
            "completed": self.completed,
            "models": models,
        }
