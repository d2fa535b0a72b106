"""What a ``least_loaded`` decision over a few rows reads between two changes of the roster.

A :class:`RowView` holds the rows that may take a request now (``present``), those of them with
room (``ok``: a free slot, or, in a wide view, room under the node's cap alone), and per open
row its load, cold cost, time to serve and the penalty and weight it is divided by. It is kept
by :class:`router.kept_scores.KeptScores` until something it was made from changes, and a row
whose slot was taken or freed is made again alone. A decision without a prompt term reads a
view's scores; one with a prompt term adds each row's prefill to its time to serve
(:func:`choose_with_prefill`): the result is the column path's to the bit
(:meth:`router.scheduling.Scheduler.rank`), draws included, or None where that path has more to
weigh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.scheduling import TIE, RowTies, Scheduler
from router.scoring import FloatArray, ScoringParams


@dataclass(slots=True)
class RowView:
    """The open rows of a roster and what their scores are made of (see the module doc)."""

    wide: bool  # ``ok`` holds the rows under their cap, free slot or not
    ok: list[int]
    loads: list[float]
    cold: list[float]
    present: list[int]  # the rows that may take a request (full or not), in order
    params: ScoringParams
    until: float  # a breaker's probe time, where one opens a node later
    bases: list[float] = field(default_factory=list)  # times to serve (where 2 rows or more)
    penalties: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # without prefill, in a narrow view
    free: list[int] = field(default_factory=list)  # in a wide view, positions with a free slot
    declines: bool = False  # without prefill, the column path must decide
    moved: set[int] = field(default_factory=set)  # rows whose slots moved since it was made

    def plain_scores(self) -> list[float]:
        """The open rows' scores without prefill (:func:`router.scoring.score`)."""
        return [base * penalty / weight for base, penalty, weight
                in zip(self.bases, self.penalties, self.weights, strict=True)]  # fmt: skip

    def set_row(self, j: int, load: float, cold_s: float, base: float | None) -> None:
        """The ``j``-th open row made again (``base``: None where it is the only one)."""
        self.loads[j], self.cold[j] = load, cold_s
        if base is not None:
            self.bases[j] = base
            if not self.wide:
                self.scores[j] = base * self.penalties[j] / self.weights[j]

    def settle(self, slot_room: Sequence[float]) -> None:
        """Make again what follows from every row (``slot_room[i]``: row ``i``'s room under its
        slots and cap): which rows have a free slot in a wide view, else whether the column
        path must decide."""
        if self.wide:
            self.free = [j for j, (i, load) in enumerate(zip(self.ok, self.loads, strict=True))
                         if load < slot_room[i]]  # fmt: skip
        else:
            self.declines = declines(self.ok, self.present, self.cold, self.scores)


def declines(ok: list[int], present: list[int], cold: list[float], scores: list[float]) -> bool:
    """The column path must decide: some node is full and the best open one must load the
    model, where a wait for the full one may be sooner."""
    if len(ok) == 1:
        return len(present) > 1 and cold[0] > 0.0
    return len(ok) < len(present) and any(cold) and not best_is_hot(scores, cold)


def best_is_hot(scores: list[float], cold_s: list[float]) -> bool:
    """The best of these rows needs no model load, whatever the random tie-breaks (which move
    a score by less than ``TIE`` of it). One pass: this runs on most decisions where a node is
    full or cold."""
    hot = cold = math.inf
    for score, cost in zip(scores, cold_s, strict=True):
        if cost > 0.0:
            if score < cold:
                cold = score
        elif score < hot:
            hot = score
    return hot * (1.0 + TIE) < cold


def choose_plain(
    scheduler: Scheduler, view: RowView, limit: int, ties: RowTies | None
) -> list[int] | None:
    """The ``limit`` best rows of a narrow view, without prefill."""
    if view.declines or not view.ok:
        return None
    if len(view.ok) == 1:
        return scheduler.best_of(view.ok, [0.0], limit)
    return scheduler.best_of(view.ok, view.scores, limit, ties)


def needs_free_slot(wide: RowView, prefill_s: Sequence[float] | FloatArray, rows: int) -> bool:
    """Only the rows with a free slot take the request: some row is full at its slots, and no
    row has a free one or the prompt's prefill is the same on every row that may take it
    (:func:`router.scheduling.open_rows`). ``rows``: how many the roster has."""
    free = wide.free
    if len(free) == len(wide.ok):
        return False
    if not free:
        return True
    present = wide.present
    prefills = prefill_s if len(present) == rows else [prefill_s[i] for i in present]
    return not min(prefills) < max(prefills)


def choose_with_prefill(
    scheduler: Scheduler, view: RowView, prefill_s: Sequence[float] | FloatArray, limit: int,
    ties: RowTies | None,
) -> list[int] | None:  # fmt: skip
    """The ``limit`` best rows of ``view`` with each row's prefill added to its time to serve."""
    ok, cold = view.ok, view.cold
    if not ok:
        return None
    if len(ok) == 1:
        if len(view.present) > 1 and cold[0] > 0.0:
            return None  # a load may be worth a wait for a full node
        return scheduler.best_of(ok, [0.0], limit)
    chosen = [(base + prefill_s[i]) * penalty / weight for i, base, penalty, weight
              in zip(ok, view.bases, view.penalties, view.weights, strict=True)]  # fmt: skip
    if len(ok) < len(view.present) and any(cold) and not best_is_hot(chosen, cold):
        return None  # a load may be worth a wait for a full node: the column path weighs it
    return scheduler.best_of(ok, chosen, limit, ties)
