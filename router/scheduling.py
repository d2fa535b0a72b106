"""Pure routing decisions: no I/O, no clocks (``now`` is passed in), no globals.

The router keeps its nodes as candidates (:mod:`router.candidates`, :mod:`router.roster`) and
asks a :class:`Scheduler` to order them (:meth:`Scheduler.rank`, on numpy columns): the first is
the choice, the rest are failovers: nothing is sorted beyond the ``limit`` best. A roster keeps
its open nodes' ``least_loaded`` scores up to date itself and only asks for the choice among
them (:meth:`Scheduler.best_of` for a few nodes, :meth:`Scheduler.best_rows` for a fleet's
columns: the same random tie-breaks).

``least_loaded`` (the default) orders by :func:`router.scoring.score`; exact ties are broken at
random. Admission (:mod:`router.admission`) works with *full* nodes: a node at its concurrency
cap (``cap``, 0 for none) is never returned, and an empty answer means "queue the request".
With caps on, the load-aware policies (``SLOT_AWARE``) also treat a node whose parallel slots
are all busy as full (:func:`room`): the request waits at the router, where it is fair across
tenants and takes whichever slot frees first, instead of in one node's queue. Two exceptions,
both "join the shortest expected wait": ``least_loaded`` still queues at the node that frees a
slot soonest when that is sooner than this router's own next completion (with several replicas
it does not see the others' completions), and it does not start a cold load while waiting for a
slot on a node that has the model loaded would be sooner. Behind several replicas it also
queues the head of a backlog at a node when that beats the backlog's drain on this replica's
own completions: the nodes' queues are the only ones the replicas share. One candidate is
ranked like many: it queues the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from operator import mul

import numpy as np
import numpy.typing as npt

from router.bounded import LruDict
from router.candidates import (
    Candidate,
    CandidateTable,
    HashArray,
    affinity_hash,
    candidate_for,
    node_hashes,
)
from router.load_estimates import (
    MAX_BUSY_ANSWERS,
    batch_one_speed,
    batch_one_speeds,
    estimate_load,
    estimate_loads,
    slot_check,
)
from router.scoring import (
    DEFAULT_PARAMS,
    FloatArray,
    ScoringParams,
    fill_speeds,
    load_time_s,
    score,
    service_s,
)
from router.tie_breaks import TIE, TieDraws, smallest

__all__ = [
    "DEFAULT_LOAD_S",
    "DEFAULT_SLOTS",
    "EVICT_FACTOR",
    "MAX_BUSY_ANSWERS",
    "MAX_ROTATIONS",
    "POLICIES",
    "SLOT_AWARE",
    "STALE_PENALTY",
    "TIE",
    "Candidate",
    "CandidateTable",
    "Scheduler",
    "batch_one_speed",
    "batch_one_speeds",
    "candidate_for",
    "estimate_load",
    "estimate_loads",
    "load_time_s",
    "node_hashes",
    "room",
    "room_of",
    "slot_check",
]

IndexArray = npt.NDArray[np.intp]

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
# Scores this close (relative) are alike when a request brings its own tie order (a prompt's
# rendezvous weights: router.prompt_prefixes), so that every replica picks the same node.
ALIKE = 0.02
# A request's tie order: the weight in [0, 1) of a row (of the roster, for best_of; of the
# table, for rank), asked only of the rows whose scores may be among the best.
RowTies = Callable[[int], float]
ColumnTies = Callable[[IndexArray], FloatArray]
DEFAULT_SLOTS = DEFAULT_PARAMS.default_slots
DEFAULT_LOAD_S = DEFAULT_PARAMS.default_load_s
EVICT_FACTOR = DEFAULT_PARAMS.evict_factor
STALE_PENALTY = DEFAULT_PARAMS.stale_penalty


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


def room_of(cap: float, slots: float, slot_aware: bool) -> float:
    """:func:`room` of one candidate."""
    if cap <= 0:
        return math.inf
    return min(cap, slots) if slot_aware else cap


def open_rows(t: CandidateTable, free: IndexArray) -> IndexArray:
    """With a prompt's prefill to weigh, and ``free`` the rows with a free slot (some): those
    and the rows whose slots are all busy, under their cap. A node that holds most of a long
    prompt may serve it sooner after a wait for a slot than a free node reading all of it; the
    score prices both (the wait, the prefill). With no free slot anywhere the request waits at
    the router as any other (:meth:`Scheduler._overflow`). Where the prefill is the same at
    every node, no node holds more of the prompt than another: the choice is as without it."""
    prefill = t.prefill_s
    if prefill is None or not prefill.min() < prefill.max():
        return free
    capped = under_room(t, room(t, False))
    return capped if capped.size > free.size else free


def under_room(t: CandidateTable, room_: FloatArray) -> IndexArray:
    """The rows under their room (:func:`room`) whose node can take the model."""
    return np.flatnonzero((t.load < room_) & (t.cold_s < math.inf))


def scores_and_speeds(
    t: CandidateTable, rows: IndexArray, p: ScoringParams
) -> tuple[FloatArray, FloatArray]:
    """``least_loaded`` scores of the given rows, and the speeds they were made with (filled
    among those rows)."""
    if rows.size == len(t.ids):  # every row: the columns as they are
        prefill = 0.0 if t.prefill_s is None else t.prefill_s
        speed = fill_speeds(t.tok_s, p)
        return score(t.load, t.slots, speed, t.cold_s, t.penalty, t.weight, prefill, p), speed
    prefill = 0.0 if t.prefill_s is None else t.prefill_s[rows]
    speed = fill_speeds(t.tok_s[rows], p)
    return score(
        t.load[rows], t.slots[rows], speed, t.cold_s[rows], t.penalty[rows], t.weight[rows],
        prefill, p,
    ), speed  # fmt: skip


class Scheduler:
    """Orders candidates by a group's policy. Holds only its random sources, its scoring
    parameters and per-key rotation state (round robin counters, smooth weighted round robin
    credits); deterministic for a seeded ``rng``."""

    def __init__(
        self, rng: random.Random | None = None, params: ScoringParams = DEFAULT_PARAMS
    ) -> None:
        self._rng = rng or random.Random()
        self._draws = TieDraws(np.random.default_rng(self._rng.getrandbits(64)))
        self.params = params
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
        if policy in ("round_robin", "weighted_round_robin"):
            candidates = sorted(candidates, key=lambda c: c.node_id)
        table = CandidateTable.from_candidates(candidates, self.params)
        rows = self.rank(
            policy, key, table, limit=limit or len(candidates), affinity=affinity, waiting=waiting
        )
        return [table.ids[i] for i in rows]

    def best_of(
        self, rows: list[int], scores: list[float], limit: int, ties: RowTies | None = None
    ) -> list[int]:
        """The ``limit`` best of ``rows`` by ``scores`` (lower first), exact ties broken at
        random: :meth:`rank`'s choice among scored rows, with the same random draws. ``ties``
        (a row's weight in [0, 1)): scores within ``ALIKE`` of each other are ordered by them
        instead, the same in every replica (asked only of the rows that may be among the
        best)."""
        if len(scores) == 1:  # one row: nothing to order (the draw keeps the stream in step)
            self._draws.skip(1)
            return rows[:1] if limit else []
        keyed = list(map(mul, scores, self._draws.factors(len(scores))))
        if ties is not None and len(scores) > 1:
            bound = _alike_bound(sorted(scores)[min(limit, len(scores)) - 1])
            for j, s in enumerate(scores):
                if s <= bound:
                    keyed[j] += s * (ALIKE * ties(rows[j]))
        return [rows[j] for j in smallest(keyed, limit)]

    def rank(
        self,
        policy: str,
        key: str,
        t: CandidateTable,
        *,
        limit: int = 3,
        affinity: str | None = None,
        waiting: int = 0,
        ties: ColumnTies | None = None,
        params: ScoringParams | None = None,
    ) -> IndexArray:
        """Row numbers of the ``limit`` best open rows of ``t``, best first (see :func:`room`).
        ``waiting``: requests already queued for this model at this router (admission);
        ``ties``: the weights of rows of ``t``, ``least_loaded``'s order among alike scores
        (see :meth:`best_of`); ``params``: the model's own (its expected output), where not
        the scheduler's."""
        p = params or self.params
        room_ = room(t, policy in SLOT_AWARE)
        ok = under_room(t, room_)
        if ok.size == 0:
            return self._overflow(t, limit, waiting, p) if policy == "least_loaded" else ok
        if policy == "least_loaded":
            ok = open_rows(t, ok)
        limit = min(limit, ok.size)
        if policy == "least_loaded":
            best = self._best(scores_and_speeds(t, ok, p)[0], ok, limit, ties)
            return self._hold_cold(t, ok, room_, best, waiting, p)
        if policy == "least_connections":
            return self._best((t.own[ok] + 1.0) * t.penalty[ok] / t.weight[ok], ok, limit)
        if policy in ("power_of_two", "power_of_two_connections"):
            return self._two_choices(policy, t, ok, limit, p)
        if policy == "round_robin":
            turn = self._rotation.get(key) or 0
            self._rotation[key] = turn + 1
            start = int(np.searchsorted(ok, turn % len(t.ids)))
            return np.roll(ok, -start)[:limit]
        if policy == "weighted_round_robin":
            return self._smooth_weighted(key, t, ok, limit)
        if policy == "random":
            return self._draws.generator().choice(ok, size=limit, replace=False)
        if policy == "sticky":
            return self._sticky(t, ok, limit, affinity, p)
        raise ValueError(f"unknown policy {policy!r}")

    def _sticky(
        self, t: CandidateTable, ok: IndexArray, limit: int, affinity: str | None,
        p: ScoringParams,
    ) -> IndexArray:  # fmt: skip
        """The session's (or tenant's) home node first, by rendezvous hashing over the open
        rows, then the ``least_loaded`` order."""
        best = self._best(scores_and_speeds(t, ok, p)[0], ok, limit)
        if affinity is None:
            return best
        if t.hashes is None:
            t.hashes = node_hashes(t.ids)
        home = ok[int(np.argmax(_mix(t.hashes[ok] ^ np.uint64(affinity_hash(affinity)))))]
        return np.concatenate(([home], best[best != home]))[:limit]

    def best_rows(self, score_: FloatArray, rows: IndexArray, limit: int) -> IndexArray:
        """The ``limit`` best of ``rows`` by ``score_`` (lower first): :meth:`rank`'s choice
        among scored rows, with the same random draws."""
        return self._best(score_, rows, limit)

    def _best(
        self, score_: FloatArray, rows: IndexArray, limit: int, ties: ColumnTies | None = None
    ) -> IndexArray:
        keyed = score_ * self._draws.factor_array(score_.size)
        if ties is not None and score_.size > 1:
            k = min(limit, score_.size) - 1
            near = np.flatnonzero(score_ <= _alike_bound(float(np.partition(score_, k)[k])))
            if near.size > 1:
                keyed[near] += score_[near] * (ALIKE * ties(rows[near]))
        if limit < score_.size:
            top = np.argpartition(keyed, limit - 1)[:limit]
            return rows[top[np.argsort(keyed[top])]]
        return rows[np.argsort(keyed)]

    def _overflow(
        self, t: CandidateTable, limit: int, waiting: int, p: ScoringParams
    ) -> IndexArray:
        """Every node's slots are busy: queue at the node that frees one soonest if that is
        sooner than this router's own next completion (which is all it can count on: with
        several router replicas it does not see the others' completions until a report),
        else nothing (the request waits in the router's queue).

        Behind several replicas, a replica's queue drains only on its own completions (and
        its share of reported free slots), while a node's queue takes every replica's
        completions there: with ``waiting`` requests queued here, the head goes to the node
        when that wait is under ``pool_share`` of this queue's own drain time. Without this,
        one replica's backlog stays its own while the others' slots turn over."""
        hard = under_room(t, room(t, False))
        if hard.size == 0:
            return hard
        service = service_s(t.slots, fill_speeds(t.tok_s, p), p)
        own_rate = float((np.minimum(t.own, t.slots) / service).sum())
        best = self._best(scores_and_speeds(t, hard, p)[0], hard, limit)
        first = best[0]
        wait = (t.load[first] + 1.0 - t.slots[first]) / t.slots[first] * service[first]
        drain = max(waiting, 1) * p.pool_share if t.replicas > 1 else 1.0
        if own_rate > 0 and wait * own_rate < drain:
            return best
        return best[:0]

    def _hold_cold(
        self, t: CandidateTable, ok: IndexArray, room_: FloatArray, best: IndexArray,
        waiting: int, p: ScoringParams,
    ) -> IndexArray:  # fmt: skip
        """Nothing (wait) when the best open node must load the model but the full nodes that
        have it loaded would free a slot for this request, behind the ``waiting`` ones, sooner
        than the load takes (so a load starts when the backlog, not one request, needs it)."""
        if t.cold_s[best[0]] <= 0.0 or ok.size == len(t.ids):
            return best
        hot = np.flatnonzero((t.load >= room_) & (t.cold_s <= 0.0))
        if not hot.size:
            return best
        service = service_s(t.slots, fill_speeds(t.tok_s, p), p)
        freeing_per_s = float((t.slots[hot] / service[hot]).sum())
        if (waiting + 1) / freeing_per_s < scores_and_speeds(t, best[:1], p)[0][0]:
            return best[:0]
        return best

    def _two_choices(
        self, policy: str, t: CandidateTable, ok: IndexArray, limit: int, p: ScoringParams
    ) -> IndexArray:
        """Two random open rows, better first; further failovers are random."""
        want = max(limit, min(2, ok.size))
        rng = self._draws.generator()
        drawn = list(dict.fromkeys(rng.integers(0, ok.size, size=2 * want).tolist()))
        if len(drawn) < want:
            drawn = rng.permutation(ok.size).tolist()
        picks = ok[drawn[:want]]
        pair = picks[:2]
        if policy == "power_of_two":
            score_ = scores_and_speeds(t, pair, p)[0]
        else:
            score_ = (t.own[pair] + 1.0) * t.penalty[pair] / t.weight[pair]
        if pair.size == 2 and (score_[1] < score_[0] or (score_[1] == score_[0] and self._coin())):
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


def _alike_bound(kth: float) -> float:
    """The highest score that may still be among the best when the ``limit``-th best is
    ``kth``, once alike scores are ordered by their weights: a score past it stays behind all
    of those, whatever the weights."""
    return kth * (1.0 + ALIKE + TIE)


def _mix(x: HashArray) -> HashArray:
    """splitmix64's finaliser, vectorised: rendezvous weights from hash xor key."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
