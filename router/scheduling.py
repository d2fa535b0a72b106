"""Pure routing decisions: no I/O, no clocks (``now`` is passed in), no globals.

The router turns its nodes into :class:`Candidate` snapshots (:func:`candidate_for`) and asks a
:class:`Scheduler` to order them (:meth:`Scheduler.order`): the first is the choice, the rest
are failovers. Large fleets (and the simulator, ``bench.sim``) keep a :class:`CandidateTable`,
one numpy column per field, and call :meth:`Scheduler.rank`: one decision over 1,000 nodes costs
tens of microseconds because nothing is sorted beyond the ``limit`` best.

Load (:func:`estimate_load`): the agent's last report of requests at the node (in flight, or
queued + running when the backend says), corrected by how this router's own count moved since
that report, never below this router's own count. A report older than ``stale_after_s`` is
unknown, not zero: only the router's own count is left, and the node is scored as uncertain.
With ``replicas`` router replicas reading the same reports, each claims only its share of a
node's reported free slots (else all of them fill the same free slot before the next report),
and counts that share as partly taken already, the more so the older the report (the replica
that freed the slot may have refilled it): a slot it freed itself, or a faster node, goes first.

``least_loaded`` (the default) scores each candidate in seconds, lower is better
(:func:`scores`)::

    (queue wait + model load + DECODE_WEIGHT * decode time) * penalty / weight

where the queue wait is ``max(0, load + 1 - slots) / slots`` service times, a service time is
``EXPECTED_TOKENS`` at the node's measured per-stream decode speed with a full batch, and the
decode time is at the batch the request would join (per-stream speed falls as the batch grows).
Model residency: loaded (no cost); loadable into free VRAM (its load time); loadable only by
evicting another model (``EVICT_FACTOR`` times the load time); cannot fit (no candidate).
Degraded and stale nodes are penalised. Exact ties are broken at random.

Admission (:mod:`router.admission`) works with *full* nodes: a node at its concurrency cap
(``Candidate.cap``, 0 for none) is never returned, and an empty answer means "queue the
request". With caps on, the load-aware policies (``SLOT_AWARE``) also treat a node whose parallel
slots are all busy as full (:func:`room`): the request waits at the router, where it is fair
across tenants and takes whichever slot frees first, instead of in one node's queue. Two
exceptions, both "join the shortest expected wait": ``least_loaded`` still queues at the node
that frees a slot soonest when that is sooner than this router's own next completion (with
several replicas it does not see the others' completions), and it does not start a cold load
while waiting for a slot on a node that has the model loaded would be sooner. Behind several
replicas it also queues the head of a backlog at a node when that beats the backlog's drain on
this replica's own completions: the nodes' queues are the only ones the replicas share.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.bounded import LruDict
from router.registry import ROUTABLE, Node, NodeState

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
HashArray = npt.NDArray[np.uint64]

POLICIES = (
    "least_loaded",
    "least_connections",
    "round_robin",
    "weighted_round_robin",
    "random",
    "sticky",
    "power_of_two",
    "power_of_two_connections",
)
SLOT_AWARE = frozenset({"least_loaded", "power_of_two", "sticky"})
MAX_ROTATIONS = 4096  # round-robin states kept (one per group and model)
DEFAULT_SLOTS = 4
DEFAULT_TOK_S = 30.0  # per-stream decode speed assumed before any was measured
DEFAULT_LOAD_S = 10.0  # model load time assumed when the size is unknown
LOAD_BYTES_PER_S = 1.5e9  # disk to VRAM, for a load-time estimate from the model's size
LOAD_BASE_S = 1.0
EXPECTED_TOKENS = 256.0  # output tokens of a typical request: turns queue length into seconds
BATCH_DECAY = 0.05  # how much each extra stream slows every stream (router-side assumption)
DECODE_WEIGHT = 0.25  # share of the decode time in the score (TTFT first, then E2E)
SPEED_NOISE = 0.5  # measured speeds this close to the median are taken as equal
DEGRADED_PENALTY = 1.5
STALE_PENALTY = 1.25
EVICT_FACTOR = 2.0
_TIE = 1e-9  # relative jitter: breaks exact ties at random, never reorders distinct scores
# Behind router replicas: a free slot in a report was freed by one replica, which saw it at
# once and may have filled it since; the chance it is still free falls with the report's age
# on this time scale (replicas-4 simulated over 8 seeds: 1 s and 2 s alike, none worse).
REFILL_S = 2.0
# Behind router replicas: queue the head waiter at the node that frees a slot soonest when that
# wait is under this share of the time this replica's own queue takes to drain on its own
# completions (its queue is not pooled with the others'; a node's queue is).
POOL_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the scheduler knows of one node for one request.

    ``tok_s``: measured per-stream decode speed (None: unknown). ``cold_s``: seconds before the
    model can serve here (None: 0 if loaded, else ``DEFAULT_LOAD_S``). ``cap``: concurrency cap
    for this model on this node, 0 for none. ``stale``: the load comes from the router's count
    alone because the node's report is too old.
    """

    node_id: str
    degraded: bool
    weight: float
    loaded: bool
    load: float
    slots: int
    own_in_flight: int
    tok_s: float | None = None
    cold_s: float | None = None
    cap: int = 0
    stale: bool = False
    replicas: int = 1


def _unclaimed(free: float, claim: float, age: float) -> float:
    """Of a report's ``free`` slots, those this replica counts as load: the others' share,
    and its own ``claim`` as far as the slot is likely taken since (see ``REFILL_S``)."""
    return free - claim * math.exp(-max(age, 0.0) / REFILL_S)


def estimate_load(
    own_now: int,
    own_at_report: int,
    reported_in_flight: float | None,
    report_age_s: float | None,
    stale_after_s: float,
    *,
    slots: int = 0,
    replicas: int = 1,
    jitter: float = 0.0,
) -> float:
    """Requests in flight at the node, as well as this router can tell now. With several
    router replicas, see :func:`estimate_loads` (``slots`` and ``jitter`` as there)."""
    if reported_in_flight is None or report_age_s is None or report_age_s > stale_after_s:
        return own_now
    load = reported_in_flight + own_now - own_at_report
    if replicas > 1 and slots:
        free = max(slots - reported_in_flight, 0)
        load += _unclaimed(free, math.floor(free / replicas + jitter), report_age_s)
    return max(own_now, load)


def estimate_loads(
    own: FloatArray,
    own_at_report: FloatArray,
    reported: FloatArray,
    report_age_s: FloatArray,
    stale_after_s: float,
    *,
    slots: FloatArray | None = None,
    replicas: int = 1,
    jitter: FloatArray | None = None,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`estimate_load` over arrays (NaN or inf age: no report). Returns (load, stale).

    With ``replicas`` > 1 router replicas reading the same reports, each claims only its share
    of a node's reported free slots: ``floor(free / replicas + jitter)`` (``jitter`` uniform in
    [0, 1), fixed per node and report, so the shares add up to the free slots on average); the
    rest counts as load, held for the other replicas until the next report. The claimed share
    counts as partly taken, more so the older the report: the replica whose request freed the
    slot saw it at once and may have filled it (:func:`_unclaimed`). The node stays open, but
    it scores a queue wait, so a slot this replica freed itself, or a faster node, goes first."""
    fresh = report_age_s <= stale_after_s
    load = reported + own - own_at_report
    if replicas > 1 and slots is not None and jitter is not None:
        free = np.maximum(slots - reported, 0.0)
        claim = np.floor(free / replicas + jitter)
        age = np.where(fresh, np.maximum(report_age_s, 0.0), 0.0)
        load = load + free - claim * np.exp(-age / REFILL_S)
    return np.where(fresh, np.maximum(own, load), own), ~fresh


# Busy answers one request may get before it goes unchecked (queues at the node it picks, as
# without slot checks): bounds the round trips a request spends when every report is stale.
MAX_BUSY_ANSWERS = 6


def slot_check(load: float, slots: float, cap: float, replicas: int, busy: int = 0) -> int:
    """The slots the node's agent should check before it takes a request sent to a free slot
    (0: no check). Behind several router replicas, a slot this replica counts as free (its
    load estimate under the slots) may have gone to another replica since the last report: the
    agent then answers busy at once, with its count, instead of queueing the request behind the
    slots (see ``node_protocol.wire.SLOT_CHECK_HEADER``), and this replica picks again knowing the
    node is full. Overflow sends (to a node already full, on purpose) and nodes without a cap
    (unknown slots) are not checked; a single router's own counts are exact. ``busy``: the
    busy answers this request already had (no check from ``MAX_BUSY_ANSWERS`` on)."""
    if replicas > 1 and cap > 0 and load < slots and busy < MAX_BUSY_ANSWERS:
        return int(slots)
    return 0


def batch_one_speed(output_tokens_per_s: float | None, running: int) -> float | None:
    """Per-stream decode speed at batch 1, from a node's output rate over ``running`` streams
    (each extra stream slows every stream by ``BATCH_DECAY``); None when nothing ran."""
    if not output_tokens_per_s or running < 1:
        return None
    return output_tokens_per_s / running * (1.0 + BATCH_DECAY * (running - 1))


def batch_one_speeds(output_tokens_per_s: FloatArray, running: FloatArray) -> FloatArray:
    """:func:`batch_one_speed` over arrays, NaN where nothing ran."""
    busy = running >= 1
    per_stream = output_tokens_per_s / np.where(busy, running, 1.0)
    return np.where(busy, per_stream * (1.0 + BATCH_DECAY * (running - 1.0)), math.nan)


def load_time_s(size_bytes: int | None) -> float:
    """Estimated seconds to load a model of this size from disk into VRAM."""
    if not size_bytes:
        return DEFAULT_LOAD_S
    return LOAD_BASE_S + size_bytes / LOAD_BYTES_PER_S


def candidate_for(
    node: Node,
    model: str,
    threshold: int,
    now: float,
    stale_after_s: float,
    *,
    cap_factor: float | None = None,
    replicas: int = 1,
    replica_salt: str = "",
) -> Candidate | None:
    """The node as a candidate for ``model``, or None when it must not get new requests (not
    routable, does not list the model, or the model cannot fit its GPUs). ``cap_factor`` sets
    the concurrency cap at that many times the model's parallel slots (None: no cap).
    ``replicas``: how many router replicas share the nodes (each claims its share of a node's
    reported free slots, drawn with a jitter from ``replica_salt``, node and report)."""
    state = node.state(threshold)
    if state not in ROUTABLE:
        return None
    entry = None
    for m in node.models():
        if m.id == model or model in m.aliases:
            entry = m
            break
    if entry is None:
        return None
    report = node.report
    cold_s = 0.0
    # This router's requests for the model, under whatever name they asked: loaded or loading.
    if not entry.loaded and not node.in_flight_by_model.get(entry.id):
        cold_s = load_time_s(entry.size_bytes or entry.vram_bytes)
        need = entry.vram_bytes or entry.size_bytes or 0
        gpus = report.gpus if report is not None else ()
        if gpus and need:
            if need > sum(g.memory_total_bytes for g in gpus):
                return None
            if need > sum(g.memory_free_bytes for g in gpus):
                cold_s *= EVICT_FACTOR
    age = None if node.load_read_at is None else now - node.load_read_at
    # What the node had at the report: this router's own then, plus the others' (smoothed: a
    # single snapshot is noisy). Behind several router replicas, where the model's slots are
    # not known (vLLM, TGI: no cap, no share of free slots to claim), the others' load is left
    # out: each replica balances its own requests, and replicas that all chase one stale
    # snapshot of the others' herd onto the same node (measured: p99 TTFT 35 ms -> 300 ms).
    # With known slots, the node's agent settles a race for a free slot (see slot_check), so
    # every reported free slot counts as free; without an agent to ask, each replica claims
    # only its share of them.
    own_only = replicas > 1 and entry.max_parallel is None
    claims = replicas > 1 and not own_only and not node.has_agent
    others = node.others_in_flight if node.busy_others is None else node.busy_others
    if own_only:
        others = 0.0
    reported = None if report is None else node.own_at_report + others
    stale = age is None or age > stale_after_s
    tok_s = None
    if report is not None and not stale:
        running = report.queue_running or report.in_flight
        tok_s = batch_one_speed(report.output_tokens_per_s, running)
    slots = entry.max_parallel or DEFAULT_SLOTS
    return Candidate(
        node_id=node.node_id,
        degraded=state is NodeState.DEGRADED,
        weight=node.registration.weight,
        loaded=entry.loaded,
        load=estimate_load(
            node.in_flight,
            node.own_at_report,
            reported,
            age,
            stale_after_s,
            slots=slots,
            replicas=replicas if claims else 1,
            jitter=_hash64(f"{replica_salt}/{node.node_id}/{report.seq}") / 2.0**64
            if report is not None and claims
            else 0.0,
        ),
        slots=slots,
        own_in_flight=node.in_flight,
        tok_s=tok_s,
        cold_s=cold_s,
        # A cap only where the parallel slots are known (reported or configured): vLLM and TGI
        # batch far past any default, and throttling them to a guess would waste their GPUs.
        cap=0
        if cap_factor is None or entry.max_parallel is None
        else max(1, math.ceil(slots * cap_factor)),
        stale=stale and report is not None,
        replicas=replicas,
    )


@dataclass(slots=True)
class CandidateTable:
    """Candidates as columns (row ``i`` is node ``ids[i]``). Mutable: a long-lived owner (the
    simulator, or a router keeping one table per group and model) updates columns in place.
    ``tok_s`` may hold NaN (unknown); ``cold_s`` +inf excludes a row; ``cap`` 0 is no cap."""

    ids: Sequence[str]
    load: FloatArray
    slots: FloatArray
    cap: FloatArray
    tok_s: FloatArray
    weight: FloatArray
    cold_s: FloatArray
    penalty: FloatArray
    own: FloatArray
    hashes: HashArray | None = None  # node_hashes(ids), made when ``sticky`` first needs it
    replicas: int = 1  # router replicas sharing the nodes (see ``Scheduler._overflow``)

    @classmethod
    def from_candidates(cls, cands: Sequence[Candidate]) -> CandidateTable:
        def col(values: list[float]) -> FloatArray:
            return np.array(values, dtype=np.float64)

        nan = math.nan
        return cls(
            ids=[c.node_id for c in cands],
            load=col([c.load for c in cands]),
            slots=col([c.slots for c in cands]),
            cap=col([c.cap for c in cands]),
            tok_s=col([nan if c.tok_s is None else c.tok_s for c in cands]),
            weight=col([c.weight for c in cands]),
            cold_s=col([_cold(c) for c in cands]),
            penalty=col([_penalty(c) for c in cands]),
            own=col([c.own_in_flight for c in cands]),
            replicas=max(c.replicas for c in cands),
        )


def _cold(c: Candidate) -> float:
    if c.cold_s is not None:
        return c.cold_s
    return 0.0 if c.loaded else DEFAULT_LOAD_S


def _penalty(c: Candidate) -> float:
    return (DEGRADED_PENALTY if c.degraded else 1.0) * (STALE_PENALTY if c.stale else 1.0)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def node_hashes(node_ids: Sequence[str]) -> HashArray:
    """Stable 64-bit hashes of node ids, the same in every router replica."""
    return np.array([_hash64(n) for n in node_ids], dtype=np.uint64)


def _mix(x: HashArray) -> HashArray:
    """splitmix64's finaliser, vectorised: rendezvous weights from hash xor key."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def loading_for_us(cold_s: FloatArray, own_for_model: FloatArray) -> FloatArray:
    """A node where this router has requests in flight for the model has it loaded, or is
    loading it for them: no further cold cost there (the next report will tell)."""
    return np.where(own_for_model > 0, 0.0, cold_s)


def fill_speeds(tok_s: FloatArray) -> FloatArray:
    """Unknown speeds (NaN) become the mean of the known ones, or ``DEFAULT_TOK_S``; speeds
    within ``SPEED_NOISE`` of the median count as the median. Measured speeds of alike nodes
    differ by noise, and router replicas that all prefer the node that looked fastest in the
    last report herd onto it; another GPU class differs by far more."""
    unknown = np.isnan(tok_s)
    if unknown.any():
        known = tok_s[~unknown]
        tok_s = np.where(unknown, known.mean() if known.size else DEFAULT_TOK_S, tok_s)
    if tok_s.size < 2:
        return tok_s
    median = float(np.median(tok_s))
    return np.where(np.abs(tok_s - median) <= SPEED_NOISE * median, median, tok_s)


def service_s(t: CandidateTable) -> FloatArray:
    """Expected seconds one request holds a slot of a full batch, per row."""
    per_stream = fill_speeds(t.tok_s)
    return EXPECTED_TOKENS * (1.0 + BATCH_DECAY * (t.slots - 1.0)) / per_stream


def scores(t: CandidateTable, rows: IndexArray | slice) -> FloatArray:
    """``least_loaded`` scores (seconds, lower is better) of the given rows."""
    slots, load = t.slots[rows], t.load[rows]
    per_stream = fill_speeds(t.tok_s[rows])
    joined = load + 1.0
    batch = np.minimum(joined, slots)
    service_full = EXPECTED_TOKENS * (1.0 + BATCH_DECAY * (slots - 1.0)) / per_stream
    wait = np.maximum(joined - slots, 0.0) / slots * service_full
    decode = EXPECTED_TOKENS * (1.0 + BATCH_DECAY * (batch - 1.0)) / per_stream
    result: FloatArray = (wait + t.cold_s[rows] + DECODE_WEIGHT * decode) * t.penalty[rows]
    return result / t.weight[rows]


def room(t: CandidateTable, slot_aware: bool) -> FloatArray:
    """How many requests each row may hold before it is full: its cap (no limit without one).
    A load-aware policy (``slot_aware``) also stops at the model's parallel slots when caps are
    on: a request that would queue at a node waits at the router instead, where it is fair
    across tenants and takes whichever slot frees first (join-the-idle-queue)."""
    capped = t.cap > 0
    limit = np.where(capped, t.cap, math.inf)
    if slot_aware:
        limit = np.minimum(limit, np.where(capped, t.slots, math.inf))
    return limit


class Scheduler:
    """Orders candidates by a group's policy. Holds only its random sources and per-key
    rotation state (round robin counters, smooth weighted round robin credits); deterministic
    for a seeded ``rng``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._np = np.random.default_rng(self._rng.getrandbits(64))
        # Keyed by group and model: a rotation forgotten (least recently used first) restarts.
        self._rotation: LruDict[str, int] = LruDict(MAX_ROTATIONS)
        self._credit: LruDict[str, tuple[Sequence[str], FloatArray]] = LruDict(MAX_ROTATIONS)

    def order(
        self,
        policy: str,
        key: str,
        candidates: Sequence[Candidate],
        *,
        limit: int | None = None,
        affinity: str | None = None,
        waiting: int = 0,
    ) -> list[str]:
        """Node ids, best first, at most ``limit``; full nodes are left out (an empty list with
        candidates given means: every node is full, queue the request). ``key`` names the
        rotation (group and model); ``affinity`` is the ``sticky`` policy's session or tenant;
        ``waiting`` how many requests for this model already wait in this router's queue."""
        if not candidates:
            return []
        if len(candidates) == 1 and policy != "weighted_round_robin":
            return self._only(candidates[0], policy)
        if policy in ("round_robin", "weighted_round_robin"):
            candidates = sorted(candidates, key=lambda c: c.node_id)
        table = CandidateTable.from_candidates(candidates)
        rows = self.rank(
            policy, key, table, limit=limit or len(candidates), affinity=affinity, waiting=waiting
        )
        return [table.ids[i] for i in rows]

    def _only(self, c: Candidate, policy: str) -> list[str]:
        """One candidate: nothing to rank, only whether it has room (as :func:`room`), kept
        off the array path, which costs far more than the decision here."""
        if c.cold_s == math.inf:
            return []
        if c.cap > 0:
            limit = min(c.cap, c.slots) if policy in SLOT_AWARE else c.cap
            if c.load >= limit:
                return []
        return [c.node_id]

    def rank(
        self,
        policy: str,
        key: str,
        t: CandidateTable,
        *,
        limit: int = 3,
        affinity: str | None = None,
        waiting: int = 0,
    ) -> IndexArray:
        """Row numbers of the ``limit`` best open rows of ``t``, best first (see :func:`room`).
        ``waiting``: requests already queued for this model at this router (admission)."""
        room_ = room(t, policy in SLOT_AWARE)
        ok = np.flatnonzero((t.load < room_) & (t.cold_s < math.inf))
        if ok.size == 0:
            return self._overflow(t, limit, waiting) if policy == "least_loaded" else ok
        limit = min(limit, ok.size)
        if policy == "least_loaded":
            best = self._best(scores(t, ok), ok, limit)
            return self._hold_cold(t, ok, room_, best, waiting)
        if policy == "least_connections":
            return self._best((t.own[ok] + 1.0) * t.penalty[ok] / t.weight[ok], ok, limit)
        if policy in ("power_of_two", "power_of_two_connections"):
            return self._two_choices(policy, t, ok, limit)
        if policy == "round_robin":
            turn = self._rotation.get(key) or 0
            self._rotation[key] = turn + 1
            start = int(np.searchsorted(ok, turn % len(t.ids)))
            return np.roll(ok, -start)[:limit]
        if policy == "weighted_round_robin":
            return self._smooth_weighted(key, t, ok, limit)
        if policy == "random":
            return self._np.choice(ok, size=limit, replace=False)
        if policy == "sticky":
            best = self._best(scores(t, ok), ok, limit)
            if affinity is None:
                return best
            if t.hashes is None:
                t.hashes = node_hashes(t.ids)
            home = ok[int(np.argmax(_mix(t.hashes[ok] ^ np.uint64(_hash64(affinity)))))]
            return np.concatenate(([home], best[best != home]))[:limit]
        raise ValueError(f"unknown policy {policy!r}")

    def _best(self, score: FloatArray, rows: IndexArray, limit: int) -> IndexArray:
        keyed = score * (1.0 + _TIE * self._np.random(score.size))
        if limit < score.size:
            top = np.argpartition(keyed, limit - 1)[:limit]
            return rows[top[np.argsort(keyed[top])]]
        return rows[np.argsort(keyed)]

    def _overflow(self, t: CandidateTable, limit: int, waiting: int = 0) -> IndexArray:
        """Every node's slots are busy: queue at the node that frees one soonest if that is
        sooner than this router's own next completion (which is all it can count on: with
        several router replicas it does not see the others' completions until a report),
        else nothing (the request waits in the router's queue).

        Behind several replicas, a replica's queue drains only on its own completions (and
        its share of reported free slots), while a node's queue takes every replica's
        completions there: with ``waiting`` requests queued here, the head goes to the node
        when that wait is under ``POOL_SHARE`` of this queue's own drain time. Without this,
        one replica's backlog stays its own while the others' slots turn over."""
        hard = np.flatnonzero((t.load < room(t, False)) & (t.cold_s < math.inf))
        if hard.size == 0:
            return hard
        service = service_s(t)
        own_rate = float((np.minimum(t.own, t.slots) / service).sum())
        best = self._best(scores(t, hard), hard, limit)
        first = best[0]
        wait = (t.load[first] + 1.0 - t.slots[first]) / t.slots[first] * service[first]
        drain = max(waiting, 1) * POOL_SHARE if t.replicas > 1 else 1.0
        if own_rate > 0 and wait * own_rate < drain:
            return best
        return best[:0]

    def _hold_cold(
        self, t: CandidateTable, ok: IndexArray, room_: FloatArray, best: IndexArray, waiting: int
    ) -> IndexArray:
        """Nothing (wait) when the best open node must load the model but the full nodes that
        have it loaded would free a slot for this request, behind the ``waiting`` ones, sooner
        than the load takes (so a load starts when the backlog, not one request, needs it)."""
        if t.cold_s[best[0]] <= 0.0 or ok.size == len(t.ids):
            return best
        hot = np.flatnonzero((t.load >= room_) & (t.cold_s <= 0.0))
        if not hot.size:
            return best
        freeing_per_s = float((t.slots[hot] / service_s(t)[hot]).sum())
        if (waiting + 1) / freeing_per_s < scores(t, best[:1])[0]:
            return best[:0]
        return best

    def _two_choices(
        self, policy: str, t: CandidateTable, ok: IndexArray, limit: int
    ) -> IndexArray:
        """Two random open rows, better first; further failovers are random."""
        want = max(limit, min(2, ok.size))
        drawn = list(dict.fromkeys(self._np.integers(0, ok.size, size=2 * want).tolist()))
        if len(drawn) < want:
            drawn = self._np.permutation(ok.size).tolist()
        picks = ok[drawn[:want]]
        pair = picks[:2]
        if policy == "power_of_two":
            score = scores(t, pair)
        else:
            score = (t.own[pair] + 1.0) * t.penalty[pair] / t.weight[pair]
        if pair.size == 2 and (score[1] < score[0] or (score[1] == score[0] and self._coin())):
            picks[:2] = pair[::-1]
        return picks[:limit]

    def _coin(self) -> bool:
        return self._rng.random() < 0.5

    def _smooth_weighted(
        self, key: str, t: CandidateTable, ok: IndexArray, limit: int
    ) -> IndexArray:
        """nginx's smooth weighted round robin over the open rows: each turn every open row
        gains its weight, the richest is chosen and pays the total."""
        ids, credit = self._credit.get(key) or ((), np.zeros(0))
        if ids is not t.ids and list(ids) != list(t.ids):
            ids, credit = t.ids, np.zeros(len(t.ids))
        weight = t.weight[ok] / t.penalty[ok]
        credit[ok] += weight
        ranked = ok[np.argsort(-credit[ok], kind="stable")][:limit]
        credit[ranked[0]] -= weight.sum()
        self._credit[key] = (ids, credit)
        return ranked
