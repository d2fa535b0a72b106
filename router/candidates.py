"""Nodes as candidates for one model: what the scheduler knows of each.

A node's *standing* for a model (:func:`standing_for`) is what its state and its last report
say: routable or not, the model's residency and load time, its slots and cap, the measured
speed, the reported load. It changes only when the node does (a report, a failed check, a busy
answer, a tripped breaker), so it is kept (:class:`router.roster.Roster`) rather than rebuilt per
request. What depends on the moment (this router's own count, the report's age) is added at
each decision (:meth:`Standing.load_at`); :func:`candidate_for` does both at once.

Model residency: loaded (no cost); loadable into free VRAM (its load time); loadable only by
evicting another model (``evict_factor`` times the load time); cannot fit (no candidate). A
node where this router has requests in flight for the model has it loaded, or is loading it
for them: no cold cost there (the next report will tell).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node_protocol.wire import ModelReport
from router.load_estimates import batch_one_speed, fresh_load
from router.nodes import ROUTABLE, Node, NodeState
from router.scoring import DEFAULT_PARAMS, FloatArray, ScoringParams, load_time_s

HashArray = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the scheduler knows of one node for one request.

    ``tok_s``: measured per-stream decode speed (None: unknown). ``cold_s``: seconds before the
    model can serve here (None: 0 if loaded, else ``default_load_s``). ``cap``: concurrency cap
    for this model on this node, 0 for none. ``stale``: the load comes from the router's count
    alone because the node's report is too old. ``prefill_s``: seconds the node would spend on
    the part of this request's prompt it has not cached (0: not modelled).
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
    prefill_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Standing:
    """A node's standing as a candidate for one model, from its state and last report (see the
    module doc). ``key``: the id the node reports the model by (this router counts the model's
    requests there under it). ``cold_s``: the load time when this router has no request for
    the model there (0 when loaded, inf when it cannot fit). ``reported``: requests at the node
    at the report, this router's then included (None: no report). ``claim_free`` and ``claim``:
    the reported free slots and this replica's share of them (both 0 unless it claims). When
    the load was read is not part of it: that moves with every report, even one that changes
    nothing else (:meth:`router.registry.Node.heard`)."""

    node_id: str
    key: str
    routable: bool
    degraded: bool
    weight: float
    loaded: bool
    cold_s: float
    slots: int
    cap: int
    tok_s: float | None
    reported: float | None
    own_at_report: int
    claim_free: float
    claim: float
    replicas: int
    probe_at: float | None  # the breaker is open: from then on, one request at a time (a probe)

    def load_at(
        self, own: int, read_at: float | None, now: float, stale_after_s: float, p: ScoringParams
    ) -> float:
        """The node's load at ``now`` with ``own`` of this router's requests there, its load
        last read (a report, a busy answer) at ``read_at``."""
        if self.reported is None or read_at is None:
            return own
        age = now - read_at
        if age > stale_after_s:
            return own
        return fresh_load(
            own, self.own_at_report, self.reported, age, self.claim_free, self.claim, p.refill_s
        )


def is_stale(read_at: float | None, now: float, stale_after_s: float) -> bool:
    """The node's load was read (``read_at``), but not for ``stale_after_s``: it is unknown."""
    return read_at is not None and now - read_at > stale_after_s


def cold_now(s: Standing | None, own: int, own_model: int, now: float) -> float | None:
    """The model's load time at the node now (0 where it is loaded, or where this router has
    requests for it there), or None where the node may not take a request: not routable, its
    breaker open (or half-open with its one probe out), or the model cannot fit. ``own`` and
    ``own_model``: this router's requests at the node, and those for the model."""
    if s is None or not s.routable:
        return None
    if s.probe_at is not None and (now < s.probe_at or own > 0):
        return None
    cold_s = 0.0 if own_model else s.cold_s
    return None if cold_s == math.inf else cold_s


def model_entry(node: Node, name: str) -> ModelReport | None:
    """The node's report of the model it serves under ``name`` (its id or an alias)."""
    for m in node.models():
        if m.id == name or name in m.aliases:
            return m
    return None


def _cold_s(node: Node, entry: ModelReport, p: ScoringParams) -> float:
    """The model's residency cost on the node (see the module doc)."""
    if entry.loaded:
        return 0.0
    cold_s = load_time_s(entry.size_bytes or entry.vram_bytes, p)
    need = entry.vram_bytes or entry.size_bytes or 0
    gpus = node.report.gpus if node.report is not None else ()
    if gpus and need:
        if need > sum(g.memory_total_bytes for g in gpus):
            return math.inf
        if need > sum(g.memory_free_bytes for g in gpus):
            cold_s *= p.evict_factor
    return cold_s


def standing_for(
    node: Node,
    model: str,
    threshold: int,
    *,
    cap_factor: float | None = None,
    replicas: int = 1,
    replica_salt: str = "",
    p: ScoringParams = DEFAULT_PARAMS,
) -> Standing | None:
    """The node's standing for ``model`` (its id or an alias there), or None when it does not
    list the model. ``cap_factor`` sets the concurrency cap at that many times the model's
    parallel slots (None: no cap). ``replicas``: how many router replicas share the nodes
    (each claims its share of a node's reported free slots, drawn with a jitter from
    ``replica_salt``, node and report)."""
    entry = model_entry(node, model)
    if entry is None:
        return None
    state = node.state(threshold)
    report = node.report
    # What the node had at the report: this router's own then, plus the others' (smoothed: a
    # single snapshot is noisy). Behind several router replicas, where the model's slots are
    # not known (vLLM, TGI: no cap, no share of free slots to claim), the others' load is left
    # out: each replica balances its own requests, and replicas that all chase one stale
    # snapshot of the others' herd onto the same node (measured: p99 TTFT 35 ms -> 300 ms).
    # With known slots, the node's agent settles a race for a free slot (see slot_check), so
    # every reported free slot counts as free; without an agent to ask, each replica claims
    # only its share of them.
    own_only = replicas > 1 and entry.max_parallel is None
    others = node.others_in_flight if node.busy_others is None else node.busy_others
    reported = None if report is None else node.own_at_report + (0.0 if own_only else others)
    slots = entry.max_parallel or p.default_slots
    claim_free = claim = 0.0
    # Without an agent to settle a race for a free slot, each replica claims only its share.
    if replicas > 1 and not own_only and not node.has_agent and reported is not None:
        claim_free, claim = _claim(node, slots, reported, replicas, replica_salt)
    sample = node.speed_sample
    tok_s = None if sample is None else batch_one_speed(*sample, p)
    return Standing(
        node_id=node.node_id,
        key=entry.id,
        routable=state in ROUTABLE,
        degraded=state is NodeState.DEGRADED,
        weight=node.registration.weight,
        loaded=entry.loaded,
        cold_s=_cold_s(node, entry, p),
        slots=slots,
        # A cap only where the parallel slots are known (reported or configured): vLLM and TGI
        # batch far past any default, and throttling them to a guess would waste their GPUs.
        cap=0
        if cap_factor is None or entry.max_parallel is None
        else max(1, math.ceil(slots * cap_factor)),
        tok_s=tok_s,
        reported=reported,
        own_at_report=node.own_at_report,
        claim_free=claim_free,
        claim=claim,
        replicas=replicas,
        probe_at=node.breaker_until if node.breaker_trips else None,
    )


def _claim(
    node: Node, slots: int, reported: float, replicas: int, replica_salt: str
) -> tuple[float, float]:
    """The free slots a node reported and this replica's share of them: ``floor(free /
    replicas + jitter)``, the jitter drawn from this replica's salt, the node and the report."""
    seq = node.report.seq if node.report is not None else 0
    jitter = _hash64(f"{replica_salt}/{node.node_id}/{seq}") / 2.0**64
    free = max(slots - reported, 0)
    return free, math.floor(free / replicas + jitter)


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
    p: ScoringParams = DEFAULT_PARAMS,
) -> Candidate | None:
    """The node as a candidate for ``model`` at ``now``, or None when it must not get new
    requests (not routable, does not list the model, or the model cannot fit its GPUs). The
    arguments are :func:`standing_for`'s."""
    standing = standing_for(
        node,
        model,
        threshold,
        cap_factor=cap_factor,
        replicas=replicas,
        replica_salt=replica_salt,
        p=p,
    )
    if standing is None or not standing.routable:
        return None
    own_model = node.in_flight_by_model.get(standing.key, 0)
    if standing.cold_s == math.inf and not own_model:
        return None
    stale = is_stale(node.load_read_at, now, stale_after_s)
    return Candidate(
        node_id=node.node_id,
        degraded=standing.degraded,
        weight=standing.weight,
        loaded=standing.loaded,
        load=standing.load_at(node.in_flight, node.load_read_at, now, stale_after_s, p),
        slots=standing.slots,
        own_in_flight=node.in_flight,
        tok_s=None if stale else standing.tok_s,
        cold_s=0.0 if own_model else standing.cold_s,
        cap=standing.cap,
        stale=stale,
        replicas=replicas,
    )


@dataclass(slots=True)
class CandidateTable:
    """Candidates as columns (row ``i`` is node ``ids[i]``). Mutable: a long-lived owner (the
    simulator's oracle) updates columns in place. ``tok_s`` may hold NaN (unknown); ``cold_s``
    +inf excludes a row; ``cap`` 0 is no cap; ``prefill_s`` None is 0 everywhere."""

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
    prefill_s: FloatArray | None = None

    @classmethod
    def from_candidates(
        cls, cands: Sequence[Candidate], p: ScoringParams = DEFAULT_PARAMS
    ) -> CandidateTable:
        def col(values: list[float]) -> FloatArray:
            return np.array(values, dtype=np.float64)

        prefill = [c.prefill_s for c in cands]
        return cls(
            ids=[c.node_id for c in cands],
            load=col([c.load for c in cands]),
            slots=col([c.slots for c in cands]),
            cap=col([c.cap for c in cands]),
            tok_s=col([math.nan if c.tok_s is None else c.tok_s for c in cands]),
            weight=col([c.weight for c in cands]),
            cold_s=col([cold_of(c, p) for c in cands]),
            penalty=col([penalty_of(c.degraded, c.stale, p) for c in cands]),
            own=col([c.own_in_flight for c in cands]),
            replicas=max(c.replicas for c in cands),
            prefill_s=col(prefill) if any(prefill) else None,
        )


def cold_of(c: Candidate, p: ScoringParams) -> float:
    if c.cold_s is not None:
        return c.cold_s
    return 0.0 if c.loaded else p.default_load_s


def penalty_of(degraded: bool, stale: bool, p: ScoringParams) -> float:
    return (p.degraded_penalty if degraded else 1.0) * (p.stale_penalty if stale else 1.0)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def node_hashes(node_ids: Sequence[str]) -> HashArray:
    """Stable 64-bit hashes of node ids, the same in every router replica."""
    return np.array([_hash64(n) for n in node_ids], dtype=np.uint64)


def affinity_hash(affinity: str) -> int:
    """The 64-bit hash a session or tenant is matched against :func:`node_hashes` by."""
    return _hash64(affinity)
