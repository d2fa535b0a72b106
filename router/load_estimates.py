"""How busy a node is, as well as this router can tell: pure functions of counts and reports.

Load (:func:`estimate_load`): the agent's last report of requests at the node (in flight, or
queued + running when the backend says), corrected by how this router's own count moved since
that report, never below this router's own count. A report older than ``stale_after_s`` is
unknown, not zero: only the router's own count is left, and the node is scored as uncertain.
With ``replicas`` router replicas reading the same reports, each claims only its share of a
node's reported free slots (else all of them fill the same free slot before the next report),
and counts that share as partly taken already, the more so the older the report (the replica
that freed the slot may have refilled it): a slot it freed itself, or a faster node, goes first.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from router.scoring import DEFAULT_PARAMS, FloatArray, ScoringParams

# Busy answers one request may get before it goes unchecked (queues at the node it picks, as
# without slot checks): bounds the round trips a request spends when every report is stale.
MAX_BUSY_ANSWERS = 6


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
    p: ScoringParams = DEFAULT_PARAMS,
) -> float:
    """Requests in flight at the node, as well as this router can tell now. With several
    router replicas, see :func:`estimate_loads` (``slots`` and ``jitter`` as there)."""
    if reported_in_flight is None or report_age_s is None or report_age_s > stale_after_s:
        return own_now
    free = claim = 0.0
    if replicas > 1 and slots:
        free = max(slots - reported_in_flight, 0.0)
        claim = math.floor(free / replicas + jitter)
    return fresh_load(
        own_now, own_at_report, reported_in_flight, report_age_s, free, claim, p.refill_s
    )


def fresh_load(
    own: int,
    own_at_report: int,
    reported: float,
    age_s: float,
    claim_free: float,
    claim: float,
    refill_s: float,
) -> float:
    """:func:`estimate_load` from a report that is not stale, with this replica's ``claim`` on
    the report's ``claim_free`` free slots worked out (both 0 when it claims none)."""
    load = reported + own - own_at_report
    if claim_free:
        load = load + claim_free - claim * math.exp(-max(age_s, 0.0) / refill_s)
    return own if own >= load else load


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
    p: ScoringParams = DEFAULT_PARAMS,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`estimate_load` over arrays (NaN or inf age: no report). Returns (load, stale).

    With ``replicas`` > 1 router replicas reading the same reports, each claims only its share
    of a node's reported free slots: ``floor(free / replicas + jitter)`` (``jitter`` uniform in
    [0, 1), fixed per node and report, so the shares add up to the free slots on average); the
    rest counts as load, held for the other replicas until the next report. The claimed share
    counts as partly taken, more so the older the report: the replica whose request freed the
    slot saw it at once and may have filled it. The node stays open, but it scores a queue
    wait, so a slot this replica freed itself, or a faster node, goes first."""
    free = claim = None
    if replicas > 1 and slots is not None and jitter is not None:
        free = np.maximum(slots - reported, 0.0)
        claim = np.floor(free / replicas + jitter)
    return claimed_loads(own, own_at_report, reported, report_age_s, stale_after_s, free, claim, p)


def claimed_loads(
    own: FloatArray,
    own_at_report: FloatArray,
    reported: FloatArray,
    report_age_s: FloatArray,
    stale_after_s: float,
    claim_free: FloatArray | None,
    claim: FloatArray | None,
    p: ScoringParams,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`estimate_loads` with the claims on free slots worked out (None: no claims)."""
    fresh = report_age_s <= stale_after_s
    load = reported + own - own_at_report
    if claim_free is not None and claim is not None:
        age = np.where(fresh, np.maximum(report_age_s, 0.0), 0.0)
        load = load + claim_free - claim * np.exp(-age / p.refill_s)
    return np.where(fresh, np.maximum(own, load), own), ~fresh


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


def batch_one_speed(
    output_tokens_per_s: float | None, running: float, p: ScoringParams = DEFAULT_PARAMS
) -> float | None:
    """Per-stream decode speed at batch 1, from a node's output rate over ``running`` streams
    (each extra stream slows every stream by ``batch_decay``; a mean under one stream is one
    stream part of the time); None when nothing ran."""
    if not output_tokens_per_s or running <= 0:
        return None
    return output_tokens_per_s / running * (1.0 + p.batch_decay * max(running - 1.0, 0.0))


def batch_one_speeds(
    output_tokens_per_s: FloatArray, running: FloatArray, p: ScoringParams = DEFAULT_PARAMS
) -> FloatArray:
    """:func:`batch_one_speed` over arrays, NaN where nothing ran."""
    busy = running > 0
    per_stream = output_tokens_per_s / np.where(busy, running, 1.0)
    extra = np.maximum(running - 1.0, 0.0)
    return np.where(busy, per_stream * (1.0 + p.batch_decay * extra), math.nan)
