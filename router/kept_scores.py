"""``least_loaded`` over a few candidates, with their loads and scores kept between decisions.

A score (:func:`router.scoring.score`) changes only when its inputs do: a slot taken or freed
on the node (its load), a report or a change of state (everything), a report growing stale
(its load, speed and penalty), or the set of open nodes its speed is compared with (the
speeds are filled among them). Those are far rarer than decisions at high load, so
:class:`KeptScores` makes a row's load and score again only after one of them, and a decision
mostly reads what is kept: which rows are open now, then the choice among them
(:meth:`router.scheduling.Scheduler.best_of`). The result is the column path's
(:meth:`router.scheduling.Scheduler.rank`) to the bit, draws included; where that path has more
to decide (no open row, or a model to load while other nodes are full) this one declines.
Between two changes of the roster a decision reads a kept :class:`router.row_views.RowView`
instead of the rows, made again only for the rows whose slots moved.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import cast

from router.candidates import Standing, cold_now, is_stale, penalty_of
from router.row_views import (
    RowView,
    best_is_hot,
    choose_plain,
    choose_with_prefill,
    needs_free_slot,
)
from router.scheduling import RowTies, Scheduler, room_of
from router.scoring import FloatArray, ScoringParams, fill_speed_list, time_to_serve

# A report this close to its stale moment is looked at again (the moment is a sum of floats,
# the test of staleness a difference: they may differ in the last bit).
_EARLY_S = 1e-6
# A single row is read as it is: making it again in a view costs more than reading it
# (measured with callgrind, a decision with its slot: 35,700 instructions against 32,600; from
# two rows on the view costs less: 63,200 against 66,500).
MIN_VIEW_ROWS = 2


class KeptScores:
    """The kept loads and scores of a roster's rows (see the module doc). The roster tells it
    of changes: :meth:`moved` (a row's counts), :meth:`changed` (a row's node), :meth:`heard`
    (a row's node reported again, changing nothing else)."""

    __slots__ = ("_base", "_cap", "_changed", "_fill_rows", "_limit", "_load", "_narrow",
                 "_penalty", "_plain", "_quiet", "_recheck_at", "_score", "_speed", "_stale",
                 "_tok_s", "_weight", "_wide")  # fmt: skip

    def __init__(self, n: int) -> None:
        self._load: list[float | None] = [None] * n
        self._base: list[float | None] = [None] * n  # time to serve, before penalty and weight
        self._score: list[float | None] = [None] * n  # with them, and no prefill
        self._speed = [math.nan] * n  # the filled speed each kept score was made with
        self._tok_s = [math.nan] * n  # measured speeds, NaN where unknown or stale
        self._penalty = [1.0] * n
        self._weight = [1.0] * n
        self._stale = [False] * n  # the report was stale when the row was last looked at
        self._limit = [math.inf] * n  # room: the cap, and the slots under a cap
        self._cap = [math.inf] * n  # room: the cap alone
        self._plain = [False] * n  # routable, breaker closed, model loaded: always open
        self._fill_rows: list[int] | None = None  # the open rows the speeds were filled among
        self._changed: set[int] = set(range(n))  # rows to look at again
        self._recheck_at = math.inf  # when a fresh report may turn stale
        self._narrow: RowView | None = None  # rows with a free slot
        self._wide: RowView | None = None  # rows under their cap (a decision with prefill)
        self._quiet = False  # nothing changed since the last decision

    def moved(self, row: int) -> None:
        """A slot on the row's node was taken or freed."""
        self._load[row] = self._base[row] = self._score[row] = None
        if self._narrow is not None:
            self._narrow.moved.add(row)
        if self._wide is not None:
            self._wide.moved.add(row)

    def changed(self, row: int) -> None:
        """The row's node changed (its standing is new)."""
        self._changed.add(row)

    def rescore(self) -> None:
        """The scoring parameters changed: every row is scored anew."""
        n = len(self._load)
        self._base, self._score = [None] * n, [None] * n
        self._narrow = self._wide = None
        self._quiet = False

    def heard(self, row: int) -> None:
        """The row's node reported again, changing nothing else: a stale row is fresh again."""
        if self._stale[row]:
            self._changed.add(row)

    def _look(
        self, standings: Sequence[Standing | None], read_at: Sequence[float | None], now: float,
        stale_after_s: float, p: ScoringParams,
    ) -> None:  # fmt: skip
        """Look again at the rows that changed, and at every row once a report may have
        turned stale."""
        rows = self._changed
        if now >= self._recheck_at:
            rows, self._recheck_at = set(range(len(standings))), math.inf
        self._narrow = self._wide = None
        self._quiet = False
        for i in rows:
            self._load[i] = self._base[i] = self._score[i] = None
            s, last = standings[i], read_at[i]
            plain = s is not None and s.routable and s.probe_at is None and s.cold_s == 0.0
            self._plain[i] = plain
            if s is None:
                continue
            stale = self._stale[i] = is_stale(last, now, stale_after_s)
            if not stale and last is not None:
                self._recheck_at = min(self._recheck_at, last + stale_after_s - _EARLY_S)
            tok_s = math.nan if stale or s.tok_s is None else s.tok_s
            if tok_s != self._tok_s[i]:  # NaN too: the speeds are filled again
                self._tok_s[i], self._fill_rows = tok_s, None
            self._penalty[i] = penalty_of(s.degraded, stale, p)
            self._weight[i] = s.weight
            self._limit[i] = room_of(s.cap, s.slots, True)
            self._cap[i] = room_of(s.cap, s.slots, False)
        self._changed = set()

    def choose(
        self,
        scheduler: Scheduler,
        standings: Sequence[Standing | None],
        read_at: Sequence[float | None],
        own: Sequence[int],
        own_model: Sequence[int],
        now: float,
        stale_after_s: float,
        limit: int,
        prefill_s: Sequence[float] | FloatArray | None = None,
        ties: RowTies | None = None,
        params: ScoringParams | None = None,
    ) -> list[int] | None:
        """The ``limit`` best rows, best first, or None where the column path must decide.
        ``read_at[i]``: when row ``i``'s node's load was read; ``own[i]``, ``own_model[i]``:
        this router's requests there, and those for the model; ``prefill_s[i]``: the uncached
        prompt's prefill there (None: 0); ``ties``: the order among alike scores
        (:meth:`router.scheduling.Scheduler.best_of`); ``params``: those the kept scores are
        made with (the scheduler's where None; :meth:`rescore` after they change)."""
        p = params or scheduler.params
        if self._changed or now >= self._recheck_at:
            self._look(standings, read_at, now, stale_after_s, p)
        if len(standings) >= MIN_VIEW_ROWS:
            # A decision that follows a change reads the rows as they are, and the next one, if
            # nothing changed in between, makes the view: one made for a single decision costs
            # more than the rows alone.
            if self._quiet:
                rows = (standings, read_at, own, own_model, now, stale_after_s, p)
                if prefill_s is None:
                    return choose_plain(scheduler, self._kept_view(False, *rows), limit, ties)
                view = self._kept_view(True, *rows)
                if needs_free_slot(view, prefill_s, len(standings)):
                    view = self._kept_view(False, *rows)
                return choose_with_prefill(scheduler, view, prefill_s, limit, ties)
            self._quiet = True
        return self._choose_in_rows(scheduler, standings, read_at, own, own_model, now,
                                    stale_after_s, limit, prefill_s, ties, p)  # fmt: skip

    def _choose_in_rows(
        self, scheduler: Scheduler, standings: Sequence[Standing | None],
        read_at: Sequence[float | None], own: Sequence[int], own_model: Sequence[int],
        now: float, stale_after_s: float, limit: int,
        prefill_s: Sequence[float] | FloatArray | None, ties: RowTies | None, p: ScoringParams,
    ) -> list[int] | None:  # fmt: skip
        """:meth:`choose`, reading the rows themselves."""
        present: list[int] = []
        wide = prefill_s is not None  # rows under their cap, for now (narrowed below)
        ok, ok_loads, ok_cold = self._open(standings, read_at, own, own_model, now,
                                           stale_after_s, p, wide, present)  # fmt: skip
        if prefill_s is not None:
            ok, ok_loads, ok_cold = self._narrowed(ok, ok_loads, ok_cold, prefill_s, present)
        if not ok:
            return None
        if len(ok) == 1:  # nothing to compare its score with (the one-row case of the below)
            if len(present) > 1 and ok_cold[0] > 0.0:
                return None  # a load may be worth a wait for a full node
            return scheduler.best_of(ok, [0.0], limit)
        if ok != self._fill_rows:
            self._fill(ok, p)
        if prefill_s is None:
            kept = self._score
            chosen = cast(list[float], [kept[i] for i in ok])
            if None in chosen:  # most often one row, whose slot was taken or freed since
                for j, i in enumerate(ok):
                    if kept[i] is None:
                        chosen[j] = self._scored(i, ok_loads[j], ok_cold[j], standings, p)
        else:  # times to serve, to which this request's prefill is added
            bases = [self._time_to_serve(i, load, cold, standings, p)
                     for i, load, cold in zip(ok, ok_loads, ok_cold, strict=True)]  # fmt: skip
            penalty, weight = self._penalty, self._weight
            chosen = [(base + prefill_s[i]) * penalty[i] / weight[i]
                      for i, base in zip(ok, bases, strict=True)]  # fmt: skip
        if len(ok) < len(present) and any(ok_cold) and not best_is_hot(chosen, ok_cold):
            return None  # a load may be worth a wait for a full node: the column path weighs it
        return scheduler.best_of(ok, chosen, limit, ties)

    def _kept_view(
        self, wide: bool, standings: Sequence[Standing | None], read_at: Sequence[float | None],
        own: Sequence[int], own_model: Sequence[int], now: float, stale_after_s: float,
        p: ScoringParams,
    ) -> RowView:  # fmt: skip
        """The kept view of the rows with a free slot, or of those under their cap (``wide``),
        its moved rows made again, or one made anew."""
        view = self._wide if wide else self._narrow
        if view is not None and view.params is p and now < view.until:
            if not view.moved:
                return view
            if self._patch(view, standings, read_at, own, own_model, now, stale_after_s, p):
                view.moved.clear()
                return view
        view = self._made_view(wide, standings, read_at, own, own_model, now, stale_after_s, p)
        if wide:
            self._wide = view
        else:
            self._narrow = view
        return view

    def _made_view(
        self, wide: bool, standings: Sequence[Standing | None], read_at: Sequence[float | None],
        own: Sequence[int], own_model: Sequence[int], now: float, stale_after_s: float,
        p: ScoringParams,
    ) -> RowView:  # fmt: skip
        present: list[int] = []
        ok, loads, cold = self._open(standings, read_at, own, own_model, now, stale_after_s, p,
                                     wide, present)  # fmt: skip
        until = math.inf
        for s in standings:
            if s is None:
                continue
            if s.claim_free:  # a claimed share weighs more with time: made again each time
                until = now
            elif s.probe_at is not None and s.probe_at > now:  # a node opens for a probe then
                until = min(until, s.probe_at)
        view = RowView(wide, ok, loads, cold, present, p, until)
        if len(ok) > 1:
            if ok != self._fill_rows:
                self._fill(ok, p)
            view.bases = [self._time_to_serve(i, load, cold_s, standings, p)
                          for i, load, cold_s in zip(ok, loads, cold, strict=True)]  # fmt: skip
            view.penalties = [self._penalty[i] for i in ok]
            view.weights = [self._weight[i] for i in ok]
            if not wide:
                view.scores = view.plain_scores()
        view.settle(self._limit)
        return view

    def _patch(
        self, view: RowView, standings: Sequence[Standing | None],
        read_at: Sequence[float | None], own: Sequence[int], own_model: Sequence[int],
        now: float, stale_after_s: float, p: ScoringParams,
    ) -> bool:  # fmt: skip
        """Make the rows whose slots moved again in ``view``; False where one of them joined or
        left the open rows (or those that may take a request): the view is made anew."""
        ok, present = view.ok, view.present
        many = len(ok) > 1
        if many and ok is not self._fill_rows and ok != self._fill_rows:
            self._fill(ok, p)  # another view's decisions filled them among other rows
        bound = self._cap if view.wide else self._limit
        for i in view.moved:
            s = standings[i]
            cold_s = 0.0 if self._plain[i] else cold_now(s, own[i], own_model[i], now)
            j = bisect_left(present, i)
            if (cold_s is not None) != (j < len(present) and present[j] == i):
                return False
            if cold_s is None or s is None:
                continue
            load = self._row_load(i, s, own[i], read_at[i], now, stale_after_s, p)
            j = bisect_left(ok, i)
            if (load < bound[i]) != (j < len(ok) and ok[j] == i):
                return False
            if j < len(ok) and ok[j] == i:
                base = self._time_to_serve(i, load, cold_s, standings, p) if many else None
                view.set_row(j, load, cold_s, base)
        view.settle(self._limit)
        return True

    def _row_load(
        self, i: int, s: Standing, own: int, read_at: float | None, now: float,
        stale_after_s: float, p: ScoringParams,
    ) -> float:  # fmt: skip
        """Row ``i``'s load now, kept where it does not change with time."""
        load = self._load[i]
        if load is None:
            load = s.load_at(own, read_at, now, stale_after_s, p)
            if not s.claim_free:  # a claimed share weighs more with time: never kept
                self._load[i] = load
        return load

    def _open(
        self, standings: Sequence[Standing | None], read_at: Sequence[float | None],
        own: Sequence[int], own_model: Sequence[int], now: float, stale_after_s: float,
        p: ScoringParams, wide: bool, present: list[int],
    ) -> tuple[list[int], list[float], list[float]]:  # fmt: skip
        """The rows that may take a request now and have a free slot (``wide``: room under
        their cap), with their loads and cold costs; the rows that may take one, full or not,
        are added to ``present``."""
        loads, plain = self._load, self._plain
        bound = self._cap if wide else self._limit
        ok: list[int] = []
        ok_loads: list[float] = []
        ok_cold: list[float] = []
        for i, s in enumerate(standings):
            cold_s = 0.0 if plain[i] else cold_now(s, own[i], own_model[i], now)
            if cold_s is None:
                continue
            present.append(i)
            load = loads[i]
            if load is None:
                assert s is not None
                load = self._row_load(i, s, own[i], read_at[i], now, stale_after_s, p)
            if load < bound[i]:
                ok.append(i)
                ok_loads.append(load)
                ok_cold.append(cold_s)
        return ok, ok_loads, ok_cold

    def _narrowed(
        self, ok: list[int], loads: list[float], cold: list[float],
        prefill_s: Sequence[float] | FloatArray, present: list[int],
    ) -> tuple[list[int], list[float], list[float]]:  # fmt: skip
        """Of the rows under their cap, those with a free slot only, unless some row has one
        and the prompt's prefill differs between the rows that may take it (then all of them:
        :func:`router.scheduling.open_rows`)."""
        limits = self._limit
        free = [j for j, i in enumerate(ok) if loads[j] < limits[i]]
        if len(free) == len(ok):
            return ok, loads, cold
        if free:
            prefills = [prefill_s[i] for i in present]
            if min(prefills) < max(prefills):
                return ok, loads, cold
        return [ok[j] for j in free], [loads[j] for j in free], [cold[j] for j in free]

    def _scored(
        self, i: int, load: float, cold_s: float, standings: Sequence[Standing | None],
        p: ScoringParams,
    ) -> float:  # fmt: skip
        """Row ``i``'s score (:func:`router.scoring.score`) without prefill, kept."""
        kept = self._score[i]
        if kept is None:
            kept = self._time_to_serve(i, load, cold_s, standings, p) * self._penalty[i]
            kept = kept / self._weight[i]
            if not self._claims(standings[i]):
                self._score[i] = kept
        return kept

    def _time_to_serve(
        self, i: int, load: float, cold_s: float, standings: Sequence[Standing | None],
        p: ScoringParams,
    ) -> float:  # fmt: skip
        kept = self._base[i]
        if kept is None:
            s = standings[i]
            assert s is not None
            kept = time_to_serve(load, s.slots, self._speed[i], cold_s, p)
            if not s.claim_free:
                self._base[i] = kept
        return kept

    @staticmethod
    def _claims(s: Standing | None) -> bool:
        return s is not None and bool(s.claim_free)

    def _fill(self, ok: list[int], p: ScoringParams) -> None:
        """Fill the speeds among the open rows; a row whose speed moved is scored again."""
        speeds = fill_speed_list([self._tok_s[i] for i in ok], p)
        for i, speed in zip(ok, speeds, strict=True):
            if self._speed[i] != speed:
                self._speed[i] = speed
                self._base[i] = self._score[i] = None
        self._fill_rows = ok
