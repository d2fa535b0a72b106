"""The nodes' side of the simulation: the truth the routers only see through reports.

Each engine runs its streams by processor sharing: all ``b`` running streams advance at the
same per-stream rate ``rate(b)``, tracked as one virtual clock ``v`` (work units served per
stream), so a stream finishes when ``v`` reaches its start value plus its work. Requests past
``slots`` wait in the engine's FIFO. A request for a model that is not loaded starts a load
(Ollama-style): idle models are evicted least recently used first until the new one fits; if
busy models are in the way, the load waits until they go idle. TTFT is the time to start plus
the prompt's prefill (and the first token) at the rate of the batch the stream joins.

Prompt caches: requests that are turns of conversations (:class:`~bench.sim.workload.Turns`)
find the longest leading run of their prompt's blocks in the engine's prefix cache
(:class:`~bench.sim.prefix.PrefixCache`, sized from the node's KV memory) and prefill only the
rest; the engine holds the prompt's blocks from the start and the answer's once it ends. Each
node's agent keeps its map of those caches from the prompts it passed (for the routers'
reports). Other requests keep the older, coarser model: a session found among the engine's
last ``SESSION_CACHE`` sessions prefills ``1 - CACHED_PREFIX`` of its prompt, and their work
counts the prompt twice (once in ``work``, once as ``prefill``), as it always has.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import numpy as np

from bench.sim.cluster import PREFILL_RATIO, EngineSpec, NodeSpec
from bench.sim.prefix import BLOCK_TOKENS, PrefixCache
from bench.sim.workload import Floats, Turns
from router.scheduling import EVICT_FACTOR

UNLOADED, LOADING, LOADED = 0.0, 1.0, 2.0
SESSION_CACHE = 32  # sessions whose prompt prefix an engine keeps cached
CACHED_PREFIX = 0.8  # share of a returning session's prompt found in the cache

Schedule = Callable[[float, int, int, int], None]


class Engine:
    """One model on one node: its streams, its queue and its virtual clock."""

    __slots__ = (
        "cache", "eid", "jobs", "last_used", "local", "mi", "queue", "ready", "sessions",
        "spec", "state", "t", "v", "version",
    )  # fmt: skip

    def __init__(self, eid: int, spec: EngineSpec, mi: int, local: int) -> None:
        self.eid, self.spec, self.mi, self.local = eid, spec, mi, local
        self.state = UNLOADED
        self.ready = 0.0
        self.jobs: list[tuple[float, int]] = []  # (finish value of v, request)
        self.queue: deque[int] = deque()
        self.v = self.t = self.last_used = 0.0
        self.version = 0
        self.sessions: OrderedDict[int, None] = OrderedDict()
        self.cache = PrefixCache(spec.cache_tokens)


class Fleet:
    """Every node and engine, with per-model numpy columns of the truth (for reports and the
    clairvoyant router). ``schedule(time, kind, a, b)`` is the event queue; ``done(rid, eid,
    now)`` is called as a request finishes. ``turns``: the requests' conversations, if any."""

    COMPLETE, LOADED = 0, 1

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        specs: Sequence[EngineSpec],
        models: Sequence[str],
        work: Floats,
        prompt: Floats,
        session: Sequence[int],
        schedule: Schedule,
        done: Callable[[int, int, float], None],
        turns: Turns | None = None,
    ) -> None:
        self.nodes = nodes
        self.models = list(models)
        self._schedule, self._done = schedule, done
        self._work, self._session = work.tolist(), session
        self._prompt, self._prefill = prompt.tolist(), (prompt / PREFILL_RATIO).tolist()
        self.turns = turns
        if turns is not None:
            self._conv, self._blocks = turns.conv.tolist(), turns.blocks.tolist()
            self._kept = turns.kept.tolist()
        self.arrival: list[float] = []
        self.ttft: list[float] = []
        self.finish: list[float] = []
        self.cached = [0.0] * len(session)  # prompt tokens found in the engine's cache
        self.cold_loads = self.avoidable = 0
        self.engines: list[Engine] = []
        self.by_model: list[list[int]] = [[] for _ in self.models]
        self.on_node: list[list[int]] = [[] for _ in nodes]
        for eid, spec in enumerate(specs):
            mi = self.models.index(spec.model)
            self.engines.append(Engine(eid, spec, mi, len(self.by_model[mi])))
            self.by_model[mi].append(eid)
            self.on_node[spec.node].append(eid)
        cols = [[self.engines[e].spec for e in eids] for eids in self.by_model]
        self.load = [np.zeros(len(c)) for c in cols]
        self.running = [np.zeros(len(c)) for c in cols]
        self.state = [np.zeros(len(c)) for c in cols]
        self.ready = [np.zeros(len(c)) for c in cols]
        self.base = [np.zeros(len(c)) for c in cols]
        self.next_done = [np.full(len(c), math.inf) for c in cols]  # next stream to end
        self.slots = [np.array([s.slots for s in c], dtype=np.float64) for c in cols]
        self.tok1 = [np.array([s.tok_s for s in c]) for c in cols]
        self.decay = [np.array([s.batch_decay for s in c]) for c in cols]
        self.load_s = [np.array([s.load_s for s in c]) for c in cols]
        self._pending: list[list[int]] = [[] for _ in nodes]
        self.maps = (
            [PrefixCache(s.cache_tokens, logged=True) for s in specs] if turns is not None else []
        )
        for n, node in enumerate(nodes):
            for eid in self.on_node[n]:
                if self.engines[eid].spec.model in node.loaded:
                    self._set_state(self.engines[eid], LOADED)
            self._rebase(n)

    # -- what the routers see ---------------------------------------------------------------

    def cold_true(self, mi: int, now: float) -> Floats:
        """Seconds before each engine of model ``mi`` could serve, truly."""
        state = self.state[mi]
        wait = np.maximum(self.ready[mi] - now, 0.0)
        return np.where(state == LOADED, 0.0, np.where(state == LOADING, wait, self.base[mi]))

    def cold_reported(self, mi: int) -> Floats:
        """The same as an agent reports it: a model still loading is not loaded."""
        state = self.state[mi]
        return np.where(
            state == LOADED, 0.0, np.where(state == LOADING, self.load_s[mi], self.base[mi])
        )

    def in_flight(self, eid: int) -> float:
        """Requests at the engine, running or queued: what its agent counts."""
        eng = self.engines[eid]
        return float(self.load[eng.mi][eng.local])

    def chain(self, rid: int) -> tuple[list[int], int]:
        """A conversation turn's chain and its prompt's whole blocks (requires ``turns``)."""
        assert self.turns is not None
        return self.turns.chains[self._conv[rid]], self._blocks[rid]

    def prompt_tokens(self, rid: int) -> float:
        """The length of ``rid``'s prompt in tokens."""
        return float(self._prompt[rid])

    def prefill_for(self, rid: int, eng: Engine) -> tuple[float, float]:
        """The prefill work (decoded-token equivalents) ``rid`` would have at ``eng`` if it
        started now, and the prompt tokens it would find cached there."""
        if self.turns is not None:
            chain, blocks = self.chain(rid)
            hit = float(eng.cache.match(chain, blocks) * BLOCK_TOKENS)
            return (self._prompt[rid] - hit) / PREFILL_RATIO, hit
        prefill = self._prefill[rid]
        if self._session[rid] >= 0 and self._session[rid] in eng.sessions:
            return prefill * (1.0 - CACHED_PREFIX), prefill * CACHED_PREFIX * PREFILL_RATIO
        return prefill, 0.0

    def prefills(self, rid: int, mi: int) -> Floats:
        """:meth:`prefill_for` at each engine of model ``mi`` (the work only)."""
        eids = self.by_model[mi]
        if self.turns is None and self._session[rid] < 0:  # the same everywhere
            return np.full(len(eids), self._prefill[rid])
        return np.array([self.prefill_for(rid, self.engines[e])[0] for e in eids])

    def work(self, rid: int) -> float:
        """Work units of ``rid`` besides its prefill."""
        work: float = self._work[rid]
        return work

    # -- requests ---------------------------------------------------------------------------

    def arrive(self, rid: int, eid: int, now: float) -> None:
        eng = self.engines[eid]
        self.load[eng.mi][eng.local] += 1
        if self.maps:  # the agent sees the prompt pass
            self.maps[eid].touch(*self.chain(rid))
        if eng.state == LOADED and len(eng.jobs) < eng.spec.slots and not eng.queue:
            self._advance(eng, now)
            self._start(eng, rid, now)
            self._reschedule(eng, now)
            return
        eng.queue.append(rid)
        if eng.state == UNLOADED and eid not in self._pending[eng.spec.node]:
            mi = eng.mi
            self.cold_loads += 1
            hot = (self.state[mi] == LOADED) & (self.load[mi] < self.slots[mi])
            hot[eng.local] = False
            self.avoidable += bool(hot.any())
            self._try_load(eng, now)

    def complete(self, eid: int, version: int, now: float) -> None:
        eng = self.engines[eid]
        if version != eng.version:
            return
        self._advance(eng, now)
        jobs, mi, local = eng.jobs, eng.mi, eng.local
        finished = []
        while jobs and jobs[0][0] <= eng.v + 1e-6:
            rid = heapq.heappop(jobs)[1]
            self.finish[rid] = now
            self.load[mi][local] -= 1
            finished.append(rid)
            if self.turns is not None:  # the answer's blocks are cached too
                eng.cache.touch(self.turns.chains[self._conv[rid]], self._kept[rid])
        eng.last_used = now
        while eng.queue and len(jobs) < eng.spec.slots:
            self._start(eng, eng.queue.popleft(), now)
        self._reschedule(eng, now)
        if not jobs:
            self._retry_loads(eng.spec.node, now)
        for rid in finished:  # the routers hear of it after the node took its own queue
            self._done(rid, eid, now)

    def loaded(self, eid: int, now: float) -> None:
        eng = self.engines[eid]
        self._set_state(eng, LOADED)
        eng.t, eng.last_used = now, now
        while eng.queue and len(eng.jobs) < eng.spec.slots:
            self._start(eng, eng.queue.popleft(), now)
        self._reschedule(eng, now)

    def _advance(self, eng: Engine, now: float) -> None:
        if eng.jobs:
            eng.v += (now - eng.t) * eng.spec.rate(len(eng.jobs))
        eng.t = now

    def _start(self, eng: Engine, rid: int, now: float) -> None:
        prefill, self.cached[rid] = self.prefill_for(rid, eng)
        sid = self._session[rid]
        if self.turns is not None:
            eng.cache.touch(*self.chain(rid))
        elif sid >= 0:
            if sid in eng.sessions:
                eng.sessions.move_to_end(sid)
            else:
                eng.sessions[sid] = None
                if len(eng.sessions) > SESSION_CACHE:
                    eng.sessions.popitem(last=False)
        heapq.heappush(eng.jobs, (eng.v + self._work[rid] + prefill, rid))
        rate = eng.spec.rate(len(eng.jobs))
        self.ttft[rid] = now - self.arrival[rid] + (prefill + 1.0) / rate

    def _reschedule(self, eng: Engine, now: float) -> None:
        eng.version += 1
        self.running[eng.mi][eng.local] = len(eng.jobs)
        if eng.jobs:
            left = max(eng.jobs[0][0] - eng.v, 0.0)
            when = now + left / eng.spec.rate(len(eng.jobs))
            self.next_done[eng.mi][eng.local] = when
            self._schedule(when, self.COMPLETE, eng.eid, eng.version)
        else:
            self.next_done[eng.mi][eng.local] = math.inf

    # -- residency --------------------------------------------------------------------------

    def _set_state(self, eng: Engine, state: float, ready: float = 0.0) -> None:
        eng.state = state
        self.state[eng.mi][eng.local] = state
        self.ready[eng.mi][eng.local] = ready

    def _free_gb(self, node: int) -> float:
        used = sum(
            self.engines[e].spec.vram_gb
            for e in self.on_node[node]
            if self.engines[e].state != UNLOADED
        )
        return self.nodes[node].vram_gb - used

    def _try_load(self, eng: Engine, now: float) -> None:
        node = eng.spec.node
        need = eng.spec.vram_gb
        idle = sorted(
            (self.engines[e] for e in self.on_node[node]),
            key=lambda e: e.last_used,
        )
        for other in idle:
            if self._free_gb(node) >= need:
                break
            if other.state == LOADED and not other.jobs and not other.queue:
                self._set_state(other, UNLOADED)
        if self._free_gb(node) >= need:
            self._set_state(eng, LOADING, now + eng.spec.load_s)
            self._schedule(now + eng.spec.load_s, self.LOADED, eng.eid, 0)
        else:
            self._pending[node].append(eng.eid)
            self._set_state(eng, UNLOADED)
        self._rebase(node)

    def _retry_loads(self, node: int, now: float) -> None:
        pending = self._pending[node]
        if pending:
            self._pending[node] = []
            for eid in pending:
                self._try_load(self.engines[eid], now)

    def _rebase(self, node: int) -> None:
        """Cold cost of each model not resident on ``node``: load, evict and load, or never."""
        free, total = self._free_gb(node), self.nodes[node].vram_gb
        for eid in self.on_node[node]:
            eng = self.engines[eid]
            need, load_s = eng.spec.vram_gb, eng.spec.load_s
            cost = load_s if need <= free else load_s * EVICT_FACTOR if need <= total else math.inf
            self.base[eng.mi][eng.local] = cost
