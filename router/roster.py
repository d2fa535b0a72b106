"""The nodes of a group that serve one model, kept as candidates between requests.

Building every serving node's standing (:func:`router.candidates.standing_for`) anew for each
request costs far more than the decision itself once a model has a fleet behind it. A
:class:`Roster` keeps them: it watches its nodes (:class:`router.registry.NodeWatcher`), makes a
node's standing again only after the node changed (a report, a failed check, a busy answer, a
breaker), and moves its counts as slots are taken and freed. A decision adds what depends on
the moment (this router's counts, the reports' ages, breakers that cooled down) and hands the
scheduler the nodes that may take the request: as lists for a handful of nodes, as numpy
columns for a fleet. The simulator (``bench.sim``) keeps the very same rosters. A roster is
made for a group's index as it stood (:attr:`router.registry.Group.generation`); a node that
comes, goes, renames its models, changes its backend kind or gains an agent outdates it, and
:class:`Rosters` makes it anew when next asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from router.aliases import node_name_for
from router.bounded import LruDict
from router.candidates import (
    CandidateTable,
    HashArray,
    Standing,
    cold_now,
    is_stale,
    node_hashes,
    penalty_of,
    standing_for,
)
from router.kept_scores import KeptScores
from router.load_estimates import claimed_loads, slot_check
from router.nodes import Node
from router.registry import Group
from router.scheduling import IndexArray, Scheduler
from router.scoring import DEFAULT_PARAMS, FloatArray, ScoringParams

MAX_ROSTERS = 4096  # kept per router: (group, model, API surface) triples asked for
# group, model, the kinds that speak the surface, those that do without an agent
RosterKey = tuple[str, str, frozenset[str] | None, frozenset[str] | None]
# Up to this many nodes a roster keeps Python lists and its least_loaded scores; past it,
# numpy columns, scored at each decision (measured: the columns win from about this size).
MAX_ROWS = 96


@dataclass(frozen=True, slots=True)
class CandidateRules:
    """How this router makes candidates of nodes, the same for every roster: ``threshold``
    failed checks make a node unhealthy, a report older than ``stale_after_s`` is unknown,
    ``cap_factor`` times a model's slots is its cap (None: no caps), ``replicas`` router
    replicas share the nodes (``replica_salt``: this one's id)."""

    threshold: int
    stale_after_s: float
    cap_factor: float | None = None
    replicas: int = 1
    replica_salt: str = ""
    params: ScoringParams = DEFAULT_PARAMS


class _Columns:
    """The standings as numpy columns, for a decision over a fleet (NaN: no report)."""

    def __init__(self, n: int, params: ScoringParams) -> None:
        self.params = params
        self.routable = np.zeros(n, dtype=bool)
        self.penalty = np.ones(n)  # for being degraded
        self.probe_at = np.full(n, -math.inf)  # -inf: breaker closed
        self.cold_s = np.zeros(n)
        self.slots = np.zeros(n)
        self.cap = np.zeros(n)
        self.tok_s = np.full(n, math.nan)
        self.weight = np.ones(n)
        self.reported = np.full(n, math.nan)
        self.own_at = np.zeros(n)
        self.read_at = np.full(n, math.nan)
        self.claim_free = np.zeros(n)
        self.claim = np.zeros(n)
        self.own = np.zeros(n)  # this router's requests at the node, as Roster.own
        self.own_model = np.zeros(n)  # and those for the model
        self.has_report = np.zeros(n, dtype=bool)
        self._cold: set[int] = set()  # rows where the model must be loaded first
        self._closed: set[int] = set(range(n))  # rows not routable, breaker open, or unfit

    @property
    def some_cold(self) -> bool:
        return bool(self._cold)

    @property
    def some_closed(self) -> bool:
        return bool(self._closed)

    def write(self, i: int, s: Standing | None) -> None:
        closed = s is None or not s.routable or s.probe_at is not None or s.cold_s == math.inf
        (self._closed.add if closed else self._closed.discard)(i)
        (self._cold.add if s is not None and s.cold_s > 0.0 else self._cold.discard)(i)
        if s is None:
            self.routable[i] = False
            return
        self.routable[i] = s.routable
        self.penalty[i] = penalty_of(s.degraded, False, self.params)
        self.probe_at[i] = -math.inf if s.probe_at is None else s.probe_at
        self.cold_s[i], self.slots[i], self.cap[i] = s.cold_s, s.slots, s.cap
        self.tok_s[i] = math.nan if s.tok_s is None else s.tok_s
        self.weight[i] = s.weight
        self.reported[i] = math.nan if s.reported is None else s.reported
        self.has_report[i] = s.reported is not None
        self.own_at[i] = s.own_at_report
        self.claim_free[i], self.claim[i] = s.claim_free, s.claim


class Roster:
    """One model's candidates in one group (see the module doc). Rows follow ``nodes``;
    ``names[i]`` is the name node ``i`` serves the model under (one of ``names``)."""

    def __init__(
        self,
        nodes: Sequence[Node],
        names: tuple[str, ...],
        rules: CandidateRules,
        generation: int = 0,
    ) -> None:
        self.rules = rules
        self.generation = generation
        self.nodes = list(nodes)
        self.ids = [node.node_id for node in self.nodes]
        self.names = [node_name_for(node, names) or names[0] for node in self.nodes]
        self._renamed: dict[str, Mapping[str, str]] = {}
        n = len(self.nodes)
        self.standings: list[Standing | None] = [None] * n
        self._columns = _Columns(n, rules.params) if n > MAX_ROWS else None
        self._kept = KeptScores(n) if n <= MAX_ROWS else None
        self._hashes: HashArray | None = None
        self._dirty: set[int] = set()
        self.read_at = [node.load_read_at for node in self.nodes]  # when each load was read
        for i, node in enumerate(self.nodes):
            self._sync(i)
            node.watchers.append((self, i))
        self.keys = [s.key if s is not None else "" for s in self.standings]
        self.own = [node.in_flight for node in self.nodes]
        self.own_model = [
            node.in_flight_by_model.get(key, 0)
            for node, key in zip(self.nodes, self.keys, strict=True)
        ]
        if self._columns is not None:
            c = self._columns
            c.own[:], c.own_model[:] = self.own, self.own_model

    def node_changed(self, row: int) -> None:
        self._dirty.add(row)

    def node_heard(self, row: int) -> None:
        read_at = self.read_at[row] = self.nodes[row].load_read_at
        if self._columns is not None:
            self._columns.read_at[row] = math.nan if read_at is None else read_at
        if self._kept is not None:
            self._kept.heard(row)

    def counted(self, row: int, key: str, delta: int) -> None:
        self.own[row] += delta
        same_model = key == self.keys[row]
        if same_model:
            self.own_model[row] += delta
        if self._kept is not None:
            self._kept.moved(row)
        elif self._columns is not None:
            self._columns.own[row] += delta
            if same_model:
                self._columns.own_model[row] += delta

    def detach(self) -> None:
        """Stop watching the nodes (the roster is no longer used)."""
        for node in self.nodes:
            node.watchers[:] = [(w, row) for w, row in node.watchers if w is not self]

    def _sync(self, i: int) -> None:
        r = self.rules
        standing = standing_for(
            self.nodes[i],
            self.names[i],
            r.threshold,
            cap_factor=r.cap_factor,
            replicas=r.replicas,
            replica_salt=r.replica_salt,
            p=r.params,
        )
        self.standings[i] = standing
        if self._columns is not None:
            self._columns.write(i, standing)
        self.node_heard(i)

    def _sync_changed(self) -> None:
        if not self._dirty:
            return
        while self._dirty:
            row = self._dirty.pop()
            self._sync(row)
            if self._kept is not None:
                self._kept.changed(row)

    def _cold_s(self, i: int, now: float) -> float | None:
        return cold_now(self.standings[i], self.own[i], self.own_model[i], now)

    def can_serve(self, now: float) -> bool:
        """Some node may take a request now (full or not)."""
        self._sync_changed()
        return any(self._cold_s(i, now) is not None for i in range(len(self.nodes)))

    def slot_check(self, row: int, now: float, busy: int) -> int:
        """:func:`router.load_estimates.slot_check` for a request sent to ``row`` now, after
        ``busy`` busy answers."""
        s = self.standings[row]
        if s is None:
            return 0
        load = s.load_at(
            self.own[row], self.read_at[row], now, self.rules.stale_after_s, self.rules.params
        )
        return slot_check(load, s.slots, s.cap, s.replicas, busy)

    def hashes(self) -> HashArray:
        """The nodes' :func:`node_hashes`, made once."""
        if self._hashes is None:
            self._hashes = node_hashes(self.ids)
        return self._hashes

    def renamed(self, model: str) -> Mapping[str, str]:
        """Node id -> the name the node serves the model under, for the nodes that do not
        serve it under ``model`` (the name a request asked for: one of the roster's names)."""
        renamed = self._renamed.get(model)
        if renamed is None:
            renamed = self._renamed[model] = {
                node.node_id: name
                for node, name in zip(self.nodes, self.names, strict=True)
                if name != model and node_name_for(node, (model,)) is None
            }
        return renamed

    def decide(
        self,
        scheduler: Scheduler,
        policy: str,
        key: str,
        now: float,
        *,
        limit: int,
        affinity: str | None = None,
        waiting: int = 0,
        prefill_s: Sequence[float] | None = None,
        ties: FloatArray | None = None,
    ) -> list[int] | None:
        """The rows to try, best first. ``[]``: every node that may take the request is full
        (queue it); None: no node may take it at all (none routable, breakers open, or the
        model cannot fit). ``key`` names the rotation; ``waiting``: requests for this model
        already queued at this router; ``prefill_s``: per row, the seconds its node would spend
        on the part of this request's prompt it has not cached (None: 0 everywhere); ``ties``:
        per row, the order among alike scores (:meth:`Scheduler.best_of`)."""
        self._sync_changed()
        if self._kept is not None and policy == "least_loaded":
            rows = self._kept.choose(
                scheduler, self.standings, self.read_at, self.own, self.own_model, now,
                self.rules.stale_after_s, limit, prefill_s,
                None if ties is None else ties.tolist(),
            )  # fmt: skip
            if rows is not None:
                return rows
        if policy == "sticky":
            self.hashes()
        open_rows, table = self.table(now) if self._columns is not None else self.rows(now)
        if not open_rows.size:
            return None
        if prefill_s is not None:
            prefill = np.asarray(prefill_s, dtype=np.float64)
            table.prefill_s = prefill if open_rows.size == len(prefill) else prefill[open_rows]
        ranked = scheduler.rank(policy, key, table, limit=limit, affinity=affinity,
                                waiting=waiting,
                                ties=None if ties is None else ties[open_rows])  # fmt: skip
        picked: list[int] = open_rows[ranked].tolist()
        return picked

    def rows(self, now: float) -> tuple[IndexArray, CandidateTable]:
        """The nodes that may take a request now (their row numbers) and their candidacy, made
        row by row (a roster of a few nodes)."""
        p, stale_after = self.rules.params, self.rules.stale_after_s
        present: list[int] = []
        cols: list[tuple[float, float, float, float, float, float, float, float]] = []
        for i, s in enumerate(self.standings):
            cold_s = self._cold_s(i, now)
            if cold_s is None or s is None:
                continue
            own, read_at = self.own[i], self.read_at[i]
            stale = is_stale(read_at, now, stale_after)
            present.append(i)
            speed = math.nan if stale or s.tok_s is None else s.tok_s
            cols.append((s.load_at(own, read_at, now, stale_after, p), s.slots, s.cap, speed,
                         s.weight, cold_s, penalty_of(s.degraded, stale, p), own))  # fmt: skip
        columns = np.array(cols, dtype=np.float64).reshape(len(cols), 8).T.copy()
        load, slots, cap, tok_s, weight, cold, penalty, own_col = columns
        table = CandidateTable(
            [self.ids[i] for i in present], load, slots, cap, tok_s, weight, cold, penalty, own_col
        )
        table.replicas = self.rules.replicas
        open_rows = np.array(present, dtype=np.intp)
        if self._hashes is not None:
            table.hashes = self._hashes[open_rows]
        return open_rows, table

    def table(self, now: float) -> tuple[IndexArray, CandidateTable]:
        """The nodes that may take a request now (their row numbers) and their candidacy, made
        as numpy columns (a fleet)."""
        c = self._columns
        assert c is not None
        p, stale_after = self.rules.params, self.rules.stale_after_s
        own = c.own
        claims = self.rules.replicas > 1 and bool(c.claim_free.any())
        load, stale = claimed_loads(
            own, c.own_at, c.reported, now - c.read_at, stale_after,
            c.claim_free if claims else None, c.claim if claims else None, p,
        )  # fmt: skip
        stale &= c.has_report
        penalty, tok_s = c.penalty, c.tok_s
        if stale.any():
            penalty = penalty * np.where(stale, p.stale_penalty, 1.0)
            tok_s = np.where(stale, math.nan, tok_s)
        cold_s = np.where(c.own_model > 0, 0.0, c.cold_s) if c.some_cold else c.cold_s
        allowed = None
        if c.some_closed:
            probe = c.probe_at
            breaker = (now >= probe) & ((probe == -math.inf) | (own == 0))
            allowed = c.routable & breaker & (cold_s < math.inf)
        columns: list[FloatArray] = [load, c.slots, c.cap, tok_s, c.weight, cold_s, penalty, own]
        if allowed is None or allowed.all():
            open_rows = np.arange(len(self.ids), dtype=np.intp)
            ids: Sequence[str] = self.ids
            hashes = self._hashes
        else:
            open_rows = np.flatnonzero(allowed).astype(np.intp)
            ids = [self.ids[i] for i in open_rows.tolist()]
            columns = [col[open_rows] for col in columns]
            hashes = None if self._hashes is None else self._hashes[open_rows]
        load, slots, cap, tok_s, weight, cold_s, penalty, own = columns
        table = CandidateTable(ids, load, slots, cap, tok_s, weight, cold_s, penalty, own)
        table.hashes, table.replicas = hashes, self.rules.replicas
        return open_rows, table


class Rosters:
    """The rosters of one router, by group, model (its canonical name) and API surface (the
    backend kinds that speak it, through an agent or without one; None: all), made when first
    asked for and anew once their group's index changed. Bounded: the least recently used go
    first."""

    def __init__(self, rules: CandidateRules) -> None:
        self.rules = rules
        self._kept: LruDict[RosterKey, tuple[Group, Roster]] = LruDict(MAX_ROSTERS)

    def get(
        self,
        group: Group,
        model: str,
        names: tuple[str, ...],
        kinds: frozenset[str] | None,
        agentless_kinds: frozenset[str] | None = None,
    ) -> Roster:
        """The roster of the nodes of ``group`` serving the model under any of ``names``
        (``model`` is its canonical name), speaking one of ``kinds`` (a node without an agent:
        one of ``agentless_kinds``, where given): ordered by node id."""
        key = (group.name, model, kinds, agentless_kinds)
        kept = self._kept.get(key)
        roster = None if kept is None else kept[1]
        if kept is not None and kept[0] is group and kept[1].generation == group.generation:
            return kept[1]
        serving = {n.node_id: n for name in names for n in group.nodes_serving(name)}
        if kinds is not None:
            bare = agentless_kinds or kinds
            serving = {
                k: n
                for k, n in serving.items()
                if n.report is not None
                and n.report.backend_kind in (kinds if n.has_agent else bare)
            }
        nodes = [serving[k] for k in sorted(serving)]
        if roster is not None:
            roster.detach()
        elif len(self._kept) >= self._kept.limit:
            oldest = self._kept.pop(next(iter(self._kept)))
            if oldest is not None:
                oldest[1].detach()
        roster = Roster(nodes, names, self.rules, group.generation)
        self._kept[key] = (group, roster)
        return roster
