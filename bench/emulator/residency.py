"""Which models sit in VRAM: loading (with load time), eviction, keep-alive / TTL and unloading.

The rules come from the backend's :class:`~.policy.BackendPolicy`: Ollama loads on demand and
evicts idle models least recently used; LM Studio loads on demand (JIT) and keeps at most one
JIT-loaded model, while models loaded through its API stay until unloaded; Triton loads and
unloads only when asked, and a load that does not fit fails instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from .capacity import ModelSpec
from .config import EmulatorConfig
from .gpus import GpuPool, per_gpu_bytes
from .policy import BackendPolicy
from .slots import SlotGate

log = logging.getLogger(__name__)


class LoadFailed(Exception):
    """The model does not fit and nothing that could make room may be unloaded."""

    def __init__(self, model: str, need_bytes: int) -> None:
        super().__init__(
            f"out of memory: '{model}' needs {need_bytes} bytes per GPU and no GPU has them free"
        )
        self.model, self.need_bytes = model, need_bytes


class ModelState:
    """One served model: where it sits in VRAM, its slots, and its keep-alive timer.

    ``jit``: loaded on demand by a request; ``pinned``: loaded through an API (LM Studio), so
    it has no TTL and auto-evict leaves it alone; ``unloading``: an unload was asked while
    requests still run; ``ever_loaded`` / ``load_error``: what Triton's index reports.
    """

    def __init__(self, spec: ModelSpec, config: EmulatorConfig) -> None:
        self.spec = spec
        self.tok_s = config.tok_s or spec.cls.mid_tok_s
        self.gate = SlotGate(config.slots or spec.cls.slots)
        self.keep_alive_s = config.policy.keep_alive_s
        self.where: tuple[int, ...] | None = None  # GPUs reserved (loading or loaded)
        self.loaded = False
        self.load_task: asyncio.Task[None] | None = None
        self.refs = 0  # admitted requests (and load calls) not yet finished
        self.waiting = 0  # admitted requests without a slot yet
        self.kv_tokens = 0
        self.last_used = time.monotonic()
        self.expires_at: float | None = None  # monotonic; None = never (or busy)
        self.expiry: asyncio.TimerHandle | None = None
        self.jit = False
        self.pinned = False
        self.unloading = False
        self.ever_loaded = False
        self.load_error: str | None = None
        self.load_s = 0.0  # how long the last load took

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

    def expiry_deadline(self) -> float | None:
        """Monotonic time the keep-alive lapses (counted from now while busy); None = never."""
        if self.keep_alive_s < 0:
            return None
        if self.refs > 0 or self.expires_at is None:
            return time.monotonic() + self.keep_alive_s
        return self.expires_at


class Residency:
    """Loads, evicts and unloads models on the box's GPUs under one policy."""

    def __init__(
        self, policy: BackendPolicy, gpus: GpuPool, models: dict[str, ModelState], scale: float
    ) -> None:
        self.policy = policy
        self.gpus = gpus
        self.models = models
        self.scale = scale
        self._room: list[asyncio.Future[None]] = []

    def place_at_start(self, names: tuple[str, ...]) -> None:
        """Reserve the models loaded at start; they count as loaded through the API."""
        for name in names:
            st = self.models[name]
            st.where = self.gpus.reserve(st.spec)
            st.loaded = st.ever_loaded = st.where is not None
            if self.policy.single_jit:
                st.pinned, st.keep_alive_s = True, -1.0

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
            with suppress(asyncio.CancelledError, LoadFailed):
                await task
        for st in self.models.values():
            if st.expiry is not None:
                st.expiry.cancel()
        for fut in self._room:
            fut.cancel()

    # ---- use ------------------------------------------------------------------------------

    def hold(self, st: ModelState, keep_alive_s: float | None) -> None:
        """Someone starts using ``st``: it may not be evicted and its keep-alive pauses. Where
        the backend takes a keep-alive per request, the request's (or the default) applies."""
        st.refs += 1
        if self.policy.request_keep_alive and not st.pinned:
            st.keep_alive_s = self.policy.keep_alive_s if keep_alive_s is None else keep_alive_s
            st.unloading = False
        if st.expiry is not None:
            st.expiry.cancel()
            st.expiry = None
        st.expires_at = None

    def unhold(self, st: ModelState) -> None:
        """Someone is done with ``st``; the last one out starts the keep-alive."""
        st.refs -= 1
        st.last_used = time.monotonic()
        if st.refs == 0 and st.loaded:
            self._became_idle(st)
        if st.refs == 0:
            self._wake_room_waiters()

    # ---- loading --------------------------------------------------------------------------

    async def ensure_loaded(self, st: ModelState, explicit: bool = False) -> float:
        """Load ``st`` if needed (one load shared by all who wait); returns seconds waited.

        ``explicit``: asked through a load API rather than by a request. It cancels a pending
        unload (Triton loads the model again); LM Studio pins the model (no TTL, no auto-evict).
        """
        started = time.monotonic()
        if explicit:
            st.unloading = False
            st.keep_alive_s = self.policy.keep_alive_s
            if self.policy.single_jit:
                st.pinned, st.jit, st.keep_alive_s = True, False, -1.0
        while not st.loaded:
            if st.load_task is None:
                st.jit = not explicit
                st.load_task = asyncio.create_task(self._load(st), name=f"load {st.name}")
            await asyncio.shield(st.load_task)
        return time.monotonic() - started

    async def _load(self, st: ModelState) -> None:
        started = time.monotonic()
        try:
            while (where := self._make_room(st)) is None:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._room.append(fut)
                await fut
            st.where = where
            log.info("loading %s on GPU(s) %s", st.name, where)
            await asyncio.sleep(st.spec.cls.load_s * self.scale)
            st.loaded = st.ever_loaded = True
            st.load_error = None
            st.load_s = time.monotonic() - started
            st.last_used = time.monotonic()
        except LoadFailed as exc:
            st.load_error = str(exc)
            st.jit = st.pinned = False
            raise
        except BaseException:
            if st.where is not None and not st.loaded:
                self.gpus.release(st.spec, st.where)
                st.where = None
            raise
        finally:
            st.load_task = None
        if st.refs == 0:
            self._became_idle(st)

    def _evictable(self, other: ModelState) -> bool:
        if self.policy.evict == "lru":
            return True
        return self.policy.evict == "jit" and other.jit and not other.pinned

    def _make_room(self, st: ModelState) -> tuple[int, ...] | None:
        """Reserve VRAM for ``st``, unloading idle models the policy lets go (least recently
        used first). None: wait for a busy one to go idle; :class:`LoadFailed`: no hope."""
        if self.policy.single_jit and st.jit:  # auto-evict: the previous JIT model goes first
            previous = [
                m
                for m in self.models.values()
                if m is not st and m.jit and not m.pinned and m.where is not None
            ]
            for other in previous:
                if other.idle:
                    self._unload(other)
            if any(m.where is not None for m in previous):
                return None
        while True:
            resident = [m for m in self.models.values() if m.where is not None]
            if len(resident) < self.policy.max_loaded:
                where = self.gpus.reserve(st.spec)
                if where is not None:
                    return where
            candidates = [m for m in resident if m is not st and self._evictable(m)]
            idle = [m for m in candidates if m.idle]
            if idle:
                self._unload(min(idle, key=lambda m: m.last_used))
            elif candidates:
                return None
            else:
                raise LoadFailed(st.name, per_gpu_bytes(st.spec))

    # ---- unloading ------------------------------------------------------------------------

    def unload(self, st: ModelState) -> None:
        """Unload now if idle, else as soon as the last request finishes."""
        if st.where is None and st.load_task is None:
            st.ever_loaded = st.ever_loaded or st.load_error is not None
            st.load_error = None
            return
        st.keep_alive_s = 0.0
        st.unloading = True
        if st.idle:
            self._unload(st)

    def _unload(self, st: ModelState) -> None:
        if st.where is not None:
            self.gpus.release(st.spec, st.where)
        log.info("unloading %s", st.name)
        st.where, st.loaded, st.expires_at = None, False, None
        st.jit = st.pinned = st.unloading = False
        st.keep_alive_s = self.policy.keep_alive_s
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
