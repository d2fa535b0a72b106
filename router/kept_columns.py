"""``least_loaded`` over a fleet's columns, with the open rows' scores kept between decisions.

A decision over a fleet (:meth:`router.roster.Roster.table`, then
:meth:`router.scheduling.Scheduler.rank`) makes every column anew: the loads now, the open
rows, the speeds filled among them, every score. Between two decisions most of that stands:
a slot taken or freed moves one row's load. :class:`KeptColumns` keeps what a decision without
a prompt term reads (the table, its open rows, their scores) and makes only the rows whose
slots moved again, through the same column functions, so that a pick is the draws and a
partial sort. It is made anew when anything else may have changed it: a node's standing or
report, the scoring parameters, a fresh report turning stale with time; and it is not kept at
all while a breaker waits for its probe or router replicas share claims on free slots (both
change with time). A decision that follows a change goes the column path without a view
(:meth:`KeptColumns.wanted`). Where the column path has more to weigh (no open row, or a node
to load a model while full nodes have it loaded) the kept table goes through
:meth:`Scheduler.rank` as it would have. The choice is the column path's to the bit, draws
included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.candidates import CandidateTable
from router.roster_columns import RosterColumns
from router.scheduling import TIE, IndexArray, Scheduler, room, scores_and_speeds, under_room
from router.scoring import FloatArray, ScoringParams, score

# A report this close to its stale moment counts as stale already (the moment is a sum of
# floats, the test of staleness a difference: they may differ in the last bit).
_EARLY_S = 1e-6
TableMaker = Callable[[float], tuple[IndexArray, CandidateTable]]


@dataclass(slots=True)
class _View:
    rows: IndexArray  # the table's rows, as the roster's
    table: CandidateTable  # its load, cold and own columns are the view's own (patched)
    room: FloatArray
    ok: IndexArray  # the open rows, as the table's
    scores: FloatArray  # of the open rows
    speed: FloatArray  # the filled speeds the scores were made with
    cold: npt.NDArray[np.bool_]  # the open rows where the model must be loaded
    position: IndexArray  # of each table row among the open ones; -1: not open
    declines: bool  # rank decides (see the module doc)
    params: ScoringParams
    until: float  # when a fresh report may turn stale; now where nothing may be kept


class KeptColumns:
    """The kept view of a roster's columns (see the module doc). The roster tells it of
    changes: :meth:`moved` (a row's counts), :meth:`changed` (anything else)."""

    __slots__ = ("_moved", "_quiet", "_view")

    def __init__(self) -> None:
        self._view: _View | None = None
        self._moved: set[int] = set()
        self._quiet = False  # nothing changed since the last decision

    def moved(self, row: int) -> None:
        """A slot on the row's node was taken or freed."""
        if self._view is not None:  # else the next view is made whole
            self._moved.add(row)

    def changed(self) -> None:
        """A node's standing or report changed."""
        self._view = None
        self._quiet = False

    def wanted(self) -> bool:
        """Whether this decision goes through the kept view. One that follows a change does
        not: over a large fleet reports may come as often as requests, and a view made for one
        decision costs more than the columns alone; the next decision, if nothing changed in
        between, makes one."""
        if self._view is not None or self._quiet:
            return True
        self._quiet = True
        self._moved.clear()
        return False

    def choose(
        self, scheduler: Scheduler, make_table: TableMaker, c: RosterColumns, now: float,
        stale_after_s: float, claims: bool, limit: int, waiting: int, p: ScoringParams,
    ) -> list[int] | None:  # fmt: skip
        """The ``limit`` best rows, best first, as :meth:`Scheduler.rank` orders the table
        ``make_table(now)`` (None: no node may take the request). ``claims``: router replicas
        claim shares of the nodes' free slots."""
        view = self._view
        if (
            view is None
            or view.params is not p
            or not now < view.until
            or (self._moved and not self._patch(view, c, now, stale_after_s, p))
        ):
            view = self._made(make_table, c, now, stale_after_s, claims, p)
        self._moved.clear()
        if not view.rows.size:
            return None
        if view.declines:
            ranked = scheduler.rank("least_loaded", "", view.table, limit=limit,
                                    waiting=waiting, params=p)  # fmt: skip
        else:
            ranked = scheduler.best_rows(view.scores, view.ok, min(limit, view.ok.size))
        picked: list[int] = view.rows[ranked].tolist()
        return picked

    def _made(
        self, make_table: TableMaker, c: RosterColumns, now: float, stale_after_s: float,
        claims: bool, p: ScoringParams,
    ) -> _View:  # fmt: skip
        rows, t = make_table(now)
        t.load, t.cold_s, t.own = t.load.copy(), t.cold_s.copy(), t.own.copy()
        room_ = room(t, True)
        ok = under_room(t, room_)
        scores, speed = scores_and_speeds(t, ok, p)
        until = math.inf
        if claims or bool((c.probe_at > -math.inf).any()):
            until = now  # changes with time: made again at the next decision
        else:
            fresh = c.read_at[now - c.read_at <= stale_after_s]
            if fresh.size:
                until = float(fresh.min()) + stale_after_s - _EARLY_S
        position = np.full(rows.size, -1, dtype=np.intp)
        position[ok] = np.arange(ok.size)
        view = _View(rows, t, room_, ok, scores, speed, t.cold_s[ok] > 0.0, position, False, p,
                     until)  # fmt: skip
        view.declines = _declines(view)
        self._view = view
        return view

    def _patch(
        self, view: _View, c: RosterColumns, now: float, stale_after_s: float, p: ScoringParams
    ) -> bool:
        """Make the rows whose slots moved again, as :meth:`Roster.table` and :meth:`rank`
        make them (one row's floats, the same operations in the same order); False where one
        of them joined or left the table's rows or the open ones (the view is made anew)."""
        rows, t = view.rows, view.table
        every_row = rows.size == c.own.size
        for r in self._moved:
            j = r if every_row else int(np.searchsorted(rows, r))
            if j >= rows.size or rows.item(j) != r:
                return False  # a row left out of the table (not routable, or unfit)
            own = c.own.item(r)
            load = own
            if now - c.read_at.item(r) <= stale_after_s:  # load_estimates.claimed_loads
                load = c.reported.item(r) + own - c.own_at.item(r)
                load = own if own >= load else load  # NaN (no report) stays NaN
            cold = c.cold_s.item(r)
            if c.some_cold and c.own_model.item(r) > 0:
                cold = 0.0
            if cold == math.inf:
                return False  # the model cannot fit there any more: the row leaves the table
            t.load[j], t.cold_s[j], t.own[j] = load, cold, own
            k = view.position.item(j)
            if (load < view.room.item(j)) != (k >= 0):
                return False
            if k >= 0:
                view.scores[k] = score(load, t.slots.item(j), view.speed.item(k), cold,
                                       t.penalty.item(j), t.weight.item(j), 0.0, p)  # fmt: skip
                view.cold[k] = cold > 0.0
        view.declines = _declines(view)
        return True


def _declines(view: _View) -> bool:
    """:meth:`Scheduler.rank` must decide: no row is open, or some row is full and the best
    open one may need the model loaded (within the tie-breaks' reach), where a wait for a full
    node that has it loaded may be sooner."""
    ok, cold = view.ok, view.cold
    if not ok.size:
        return True
    if ok.size == len(view.table.ids) or not cold.any():
        return False
    scores = view.scores
    best_hot = float(np.min(scores, where=~cold, initial=math.inf))
    return not best_hot * (1.0 + TIE) < float(np.min(scores, where=cold, initial=math.inf))
