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
from dataclasses import dataclass, replace

import numpy as np

from node_protocol.prompt_prefix import Fingerprint
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
from router.kept_columns import KeptColumns
from router.kept_scores import KeptScores
from router.load_estimates import claimed_loads, slot_check
from router.nodes import Node
from router.prompt_index import PromptIndex
from router.prompt_prefixes import PrefixTerms, Rendezvous
from router.registry import Group
from router.roster_columns import RosterColumns
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
    max_rows: int = MAX_ROWS  # past this many nodes, columns


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
        self.params = rules.params  # with the model's expected output (:meth:`expect`)
        self.generation = generation
        self.nodes = list(nodes)
        self.ids = [node.node_id for node in self.nodes]
        self.names = [node_name_for(node, names) or names[0] for node in self.nodes]
        self._renamed: dict[str, Mapping[str, str]] = {}
        n = len(self.nodes)
        self.standings: list[Standing | None] = [None] * n
        self._columns = RosterColumns(n, rules.params) if n > rules.max_rows else None
        self._kept = KeptScores(n) if n <= rules.max_rows else None
        self._kept_columns = KeptColumns()  # used with the columns
        self._hashes: HashArray | None = None
        self._hash_list: list[int] | None = None
        self._prompts: PromptIndex | None = None  # made at the first request with a prompt
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
            self._kept_columns.changed()
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
            self._kept_columns.moved(row)

    def expect(self, tokens: float) -> None:
        """Requests for the model are expected to decode ``tokens`` output tokens (learned:
        :class:`router.answer_lengths.AnswerLengths`); the scores are made with it from now."""
        if tokens != self.params.expected_tokens:
            self.params = replace(self.rules.params, expected_tokens=tokens)
            if self._kept is not None:
                self._kept.rescore()

    def detach(self) -> None:
        """Stop watching the nodes (the roster is no longer used)."""
        for node in self.nodes:
            node.watchers[:] = [(w, row) for w, row in node.watchers if w is not self]
            if self._prompts is not None:
                index = self._prompts
                node.prompt_watchers[:] = [w for w in node.prompt_watchers if w[0] is not index]

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

    def hash_list(self) -> list[int]:
        """:meth:`hashes` as Python ints, made once."""
        if self._hash_list is None:
            self._hash_list = self.hashes().tolist()
        return self._hash_list

    def prompt_terms(self, fp: Fingerprint) -> PrefixTerms | None:
        """Each row's prefill term for the prompt; None when no node's cache is known."""
        index = self._prompts
        if index is None:
            index = self._prompts = PromptIndex(self.nodes, self.names, self._columns is not None)
            for i, node in enumerate(self.nodes):
                node.prompt_watchers.append((index, i))
        found = index.held(fp)
        if found is None:
            return None
        base, more = found
        ties = Rendezvous.of(fp, more)
        return PrefixTerms(index.prefill_s(fp.chars, base, more), base, more, ties)

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
        prefill_s: Sequence[float] | FloatArray | None = None,
        ties: Rendezvous | None = None,
    ) -> list[int] | None:
        """The rows to try, best first. ``[]``: every node that may take the request is full
        (queue it); None: no node may take it at all (none routable, breakers open, or the
        model cannot fit). ``key`` names the rotation; ``waiting``: requests for this model
        already queued at this router; ``prefill_s``: per row, the seconds its node would spend
        on the part of this request's prompt it has not cached (None: 0 everywhere); ``ties``:
        the prompt's order among alike scores (:meth:`Scheduler.best_of`)."""
        self._sync_changed()
        if self._kept is not None and policy == "least_loaded":
            row_ties = None
            if ties is not None:
                hashes = self.hash_list()
                row_ties = lambda row: ties.weight(hashes[row], row)  # noqa: E731
            rows = self._kept.choose(
                scheduler, self.standings, self.read_at, self.own, self.own_model, now,
                self.rules.stale_after_s, limit, prefill_s, row_ties, self.params,
            )  # fmt: skip
            if rows is not None:
                return rows
        c = self._columns
        kept = policy == "least_loaded" and prefill_s is None and ties is None
        if c is not None and kept and self._kept_columns.wanted():
            claims, r = self.rules.replicas > 1 and bool(c.claim_free.any()), self.rules
            return self._kept_columns.choose(scheduler, self.table, c, now, r.stale_after_s,
                                             claims, limit, waiting, self.params)  # fmt: skip
        if policy == "sticky" or ties is not None:
            self.hashes()
        open_rows, table = self.table(now) if self._columns is not None else self.rows(now)
        if not open_rows.size:
            return None
        if prefill_s is not None:
            prefill = np.asarray(prefill_s, dtype=np.float64)
            table.prefill_s = prefill if open_rows.size == len(prefill) else prefill[open_rows]
        column_ties = None
        if ties is not None and table.hashes is not None:
            node_hashes = table.hashes
            column_ties = lambda rows: ties.weights(node_hashes[rows], open_rows[rows])  # noqa: E731
        ranked = scheduler.rank(policy, key, table, limit=limit, affinity=affinity,
                                waiting=waiting, ties=column_ties, params=self.params)  # fmt: skip
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
