"""A roster's standings as numpy columns (:class:`router.roster.Roster` over a fleet)."""

from __future__ import annotations

import math

import numpy as np

from router.candidates import Standing, penalty_of
from router.scoring import ScoringParams


class RosterColumns:
    """A roster's standings as numpy columns, for a decision over a fleet (NaN: no report)."""

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
