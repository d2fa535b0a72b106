"""Where each routed request is written down when it ends.

A request that ends, answered or not, leaves its mark in five places: the Prometheus series,
the live page's activity, the access log, the answer lengths learned per model (an answer that
reached its end) and its tenant's token budget. One object holds them all, made once at
start-up: each request then reaches them through the dispatcher, not through the application's
table (a few lookups a request, on the path every request takes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router.access_log import AccessLog
from router.answer_lengths import AnswerLengths
from router.dashboard import Activity
from router.limits import TenantRateLimiter
from router.metrics import RouterMetrics
from router.records import RequestRecord


@dataclass(frozen=True, slots=True)
class Ledger:
    metrics: RouterMetrics
    activity: Activity
    access_log: AccessLog
    answer_lengths: AnswerLengths
    rate_limiter: TenantRateLimiter
    canonical: Callable[[str], str]  # the one name a model's answers are learned under

    def started(self, record: RequestRecord, now: float) -> None:
        """A request came in: counted in progress, and within its tenant's request rate (or
        :class:`~router.errors.RateLimited`)."""
        self.metrics.in_progress.add((record.group,), 1)
        if self.rate_limiter:
            self.rate_limiter.admit(record.tenant, now)

    def ended(self, record: RequestRecord, now: float) -> None:
        """The request is over (:meth:`started` came first), whatever its outcome."""
        record.close(time.perf_counter())
        metrics = self.metrics
        metrics.in_progress.add((record.group,), -1)
        if self.rate_limiter:
            self.rate_limiter.charge_tokens(record.tenant, record.output_tokens, now)
        metrics.observe(record)
        if record.status == 200 and record.answer.finished:
            self.answer_lengths.note(self.canonical(record.model), record.output_tokens)
        self.activity.note(record)
        self.access_log.write(record)
