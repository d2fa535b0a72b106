"""Router replicas in the simulation, each running the router's own scheduler.

A replica is a router's registry (:class:`router.registry.Registry`) with one node per engine
(:mod:`bench.sim.agents`), which takes the agents' reports (:meth:`~router.registry.Registry.
apply_report`) and busy answers (:meth:`~router.registry.Registry.note_busy`) as the router
does, and a roster of each model's nodes (:class:`router.roster.Roster`: the router's candidate
code, scoring with :class:`router.scoring.ScoringParams`). It reserves with the router's
:class:`~router.registry.Reservation`, orders with the real :class:`router.scheduling.Scheduler`
and queues with the real :class:`router.admission.FairQueue`. The clairvoyant reference is in
:mod:`bench.sim.clairvoyant`.

Where requests are conversation turns, a replica also keeps a map of the nodes' prompt caches
(:class:`bench.sim.prefix.PrefixView`: the agents' reports plus what it routed since), in
tokens where the router's is in characters (``CHARS_PER_TOKEN`` apart). ``least_loaded`` weighs
it as the router does: each node's prefill term is its uncached prompt over its prefill rate
(:func:`router.prompt_prefixes.chars_per_s`), learned as the router learns it (from the first
token of a prompt a node took at once, and the engine's count of what it read), with the
prompt's rendezvous order among alike scores (:class:`router.prompt_prefixes.Rendezvous`).
Each replica also learns each model's answer length from the answers it saw end
(:class:`router.answer_lengths.AnswerLengths`), as a router does. ``least_loaded_blind`` is
``least_loaded`` without the term (the router before it), and the simulator's own
``prefix_affinity`` (a comparison baseline, not a router policy) takes, among the nodes the
roster's ``least_loaded`` would accept, the one that holds the longest leading part of the
prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from bench.sim.agents import Reader, Snapshot, engine_name, snapshot
from bench.sim.nodes import Fleet
from bench.sim.prefix import Change, PrefixView
from bench.sim.workload import Floats, Requests
from node_protocol.wire import Registration
from router.admission import AdmissionLimits, FairQueue
from router.answer_lengths import AnswerLengths
from router.prompt_prefixes import Rendezvous, chars_per_s, learn
from router.prompt_routing import has_free_slot
from router.registry import Registry, Reservation, node_id_for
from router.roster import CandidateRules, Roster
from router.scheduling import Scheduler

STALE_AFTER_FACTOR = 3.0  # a report older than this many intervals is stale (as the router)
PICK_TRIES = 3  # the router's max_attempts: busy answers to slot checks before it waits
PREFIX_AFFINITY = "prefix_affinity"  # the simulator's prefix-aware baseline (not in the router)
BLIND = "least_loaded_blind"  # least_loaded without the prefill term
CHARS_PER_TOKEN = 4.0
GROUP = "g"
FAILURE_THRESHOLD = 3

__all__ = ["BLIND", "PREFIX_AFFINITY", "Replica", "Snapshot", "snapshot"]


class View:
    """One replica's view of one model's engines: the router's roster of their nodes."""

    def __init__(self, registry: Registry, fleet: Fleet, mi: int, rules: CandidateRules) -> None:
        self.registry, self.mi = registry, mi
        self.eids: list[int] = fleet.by_model[mi]
        group = registry.groups[GROUP]
        nodes = [group.nodes[node_id_for(GROUP, engine_name(e))] for e in self.eids]
        self.model = fleet.models[mi]
        self.roster = Roster(nodes, (self.model,), rules, group.generation)
        self._held: dict[int, Reservation] = {}
        # request -> (row, sent at): its first token teaches the row's node its prefill rate,
        # as in the router (router.prompt_routing), from the engine's count of what it read
        self._teachers: dict[int, tuple[int, float]] = {}
        self._reader = Reader(fleet, mi)

    def pick(
        self, scheduler: Scheduler, policy: str, key: str, now: float, affinity: str,
        waiting: int, busy: int, cached: Callable[[], Floats] | None = None,
        prompt: tuple[int, float] | None = None,
    ) -> tuple[int, int] | None:  # fmt: skip
        """The row to send to and its slot check, or None (queue the request). ``cached``: the
        prompt tokens each row holds (for ``prefix_affinity``, asked only when more than one
        row could take the request; for ``least_loaded``, its prefill term, with ``prompt``:
        the leading block and the prompt's tokens)."""
        roster = self.roster
        if cached is not None and prompt is not None:
            prefill, ties = self._prefill_terms(cached(), prompt)
            rows = roster.decide(scheduler, policy, key, now, limit=1, affinity=affinity,
                                 waiting=waiting, prefill_s=prefill, ties=ties)  # fmt: skip
        elif cached is None:
            policy = "least_loaded" if policy == BLIND else policy
            rows = roster.decide(scheduler, policy, key, now, limit=1, affinity=affinity,
                                 waiting=waiting)  # fmt: skip
        else:
            rows = roster.decide(scheduler, "least_loaded", key, now,
                                 limit=len(roster.nodes), waiting=waiting)  # fmt: skip
            if rows is not None and len(rows) > 1:
                held = cached()[rows]
                rows = rows[int(np.argmax(held)) :]
        if not rows:
            return None
        return rows[0], roster.slot_check(rows[0], now, busy)

    def _prefill_terms(
        self, held_tokens: Floats, prompt: tuple[int, float]
    ) -> tuple[list[float], Rendezvous]:
        """Each row's prefill seconds and the prompt's rendezvous order, as the router reckons
        them."""
        lead, tokens = prompt
        uncached = (tokens - held_tokens) * CHARS_PER_TOKEN
        return (uncached / self._prefill_rates()).tolist(), Rendezvous(lead)

    def _prefill_rates(self) -> Floats:
        """Each node's prefill rate as the router takes it: learned, or where a node taught
        none yet, the mean of those its peers taught (:class:`router.prefill_rates.PeerRates`;
        the simulated nodes are all of one backend kind), or the kind's default."""
        nodes = self.roster.nodes
        learned = [node.prefill_chars_per_s for node in nodes]
        known = [rate for rate in learned if rate is not None]
        stand_in = sum(known) / len(known) if known else chars_per_s(nodes[0])
        return np.array([stand_in if rate is None else rate for rate in learned])

    def hold(self, rid: int, row: int, now: float, weighed: bool = False) -> None:
        """Reserve ``row`` for ``rid`` (``weighed``: the pick weighed its prompt's prefill)."""
        if weighed and has_free_slot(self.roster, row, now):
            self._teachers[rid] = (row, now)
        self._held[rid] = Reservation(self.roster.nodes[row], self.model)

    def free(self, rid: int, first_token_at: float, uncached_chars: float) -> None:
        """``rid`` ended; the engine read ``uncached_chars`` of its prompt (its own count)."""
        taught = self._teachers.pop(rid, None)
        if taught is not None:
            row, sent = taught
            learn(self.roster.nodes[row], int(uncached_chars), first_token_at - sent)
        self._held.pop(rid).release()

    def busy(self, row: int, in_flight: float, now: float) -> None:
        """The agent answered a slot check busy, with its count."""
        self.registry.note_busy(self.roster.nodes[row], int(in_flight), now)

    def take(self, snap: Snapshot, now: float) -> None:
        """Reports arriving ``now``."""
        nodes = self.roster.nodes
        for row, report in self._reader.reports(snap):
            self.registry.apply_report(nodes[row], report, now)


def _registry(fleet: Fleet) -> Registry:
    """A router's registry with a node per engine, each with its first report in hand."""
    registry = Registry("least_loaded", FAILURE_THRESHOLD)
    registry.ensure_group(GROUP).declared = True
    for mi, eids in enumerate(fleet.by_model):
        sent = Reader(fleet, mi).reports(snapshot(fleet, mi, np.arange(len(eids))))
        for eid, (_, report) in zip(eids, sent, strict=True):
            name = engine_name(eid)
            node, _ = registry.register(GROUP, Registration(name, f"http://{name}"), 0.0)
            registry.apply_report(node, report, 0.0)
    return registry


class Replica:
    """One router process: views, a scheduler and an admission queue."""

    def __init__(
        self,
        policy: str,
        fleet: Fleet,
        reqs: Requests,
        limits: AdmissionLimits,
        *,
        cap_factor: float,
        report_interval_s: float,
        seed: int,
        reject: Callable[[int, int, float], None],
        replicas: int = 1,
    ) -> None:
        rules = CandidateRules(
            FAILURE_THRESHOLD,
            STALE_AFTER_FACTOR * report_interval_s,
            cap_factor=cap_factor if cap_factor > 0 else None,
            replicas=replicas,
        )
        self.limits, self.fleet, self.reject = limits, fleet, reject
        self.cap_factor = cap_factor
        self.views = self._views(rules)
        self.prefix = [PrefixView(len(e)) for e in fleet.by_model] if fleet.turns else []
        self.policy = policy
        self.scheduler = Scheduler(random.Random(seed))
        # one queue per model: a freed slot can only serve its own model's waiters
        self.queues: list[FairQueue[int]] = [
            FairQueue(limits.max_queue, limits.tenant_weights) for _ in fleet.models
        ]
        self._model: list[int] = reqs.model.tolist()
        self._output: list[float] = reqs.output.tolist()
        # what the router learns of each model's answers, from those this replica relayed
        self.answer_lengths = AnswerLengths(self.scheduler.params.expected_tokens)
        self._tenant = [str(t) for t in reqs.tenant.tolist()]
        self._affinity = [
            f"s{s}" if s >= 0 else f"t{t}"
            for s, t in zip(reqs.session.tolist(), self._tenant, strict=True)
        ]
        self._keys = [f"{GROUP}/{m}" for m in fleet.models]
        self.busy_answers = 0
        self.bounced: dict[int, int] = {}  # request -> busy answers it had
        self._now = 0.0

    def _views(self, rules: CandidateRules) -> list[View]:
        """Per model, what this replica knows of its engines: a roster in a registry of its own."""
        fleet = self.fleet
        registry = _registry(fleet)
        return [View(registry, fleet, mi, rules) for mi in range(len(fleet.models))]

    def offer(self, rid: int, now: float) -> None:
        self._now = now
        mi = self._model[rid]
        queue = self.queues[mi]
        alone = not len(queue)
        if alone:
            eid = self.try_pick(rid)
            if eid is not None:
                queue.started(self._tenant[rid])
                self.fleet.arrive(rid, eid, now)
                return
        out = queue.push(self._tenant[rid], rid, now + self.limits.max_wait_s)
        if out is not None:
            self.reject(out, 429, now)
        if not alone and out != rid:
            self.wake(mi, now)

    def try_pick(self, rid: int) -> int | None:
        """The engine for ``rid``, reserved, or None (queue it). A pick that the agent answers
        busy (:func:`router.load_estimates.slot_check`) is taken back and made again, as the
        router does, up to ``PICK_TRIES`` times (the round trip is not modelled)."""
        mi = self._model[rid]
        view = self.views[mi]
        view.roster.expect(self.answer_lengths.expected(view.model))
        prefix_aware = self.prefix and self.policy in (PREFIX_AFFINITY, "least_loaded")
        cached = self._cached(rid, mi) if prefix_aware else None
        prompt = self._prompt(rid) if prefix_aware and self.policy == "least_loaded" else None
        for _ in range(PICK_TRIES):
            busy = self.bounced.get(rid, 0)
            picked = view.pick(self.scheduler, self.policy, self._keys[mi], self._now,
                               self._affinity[rid], len(self.queues[mi]), busy,
                               cached, prompt)  # fmt: skip
            if picked is None:
                return None
            row, check = picked
            eid = view.eids[row]
            at_node = self.fleet.in_flight(eid)
            if check and at_node >= check:
                view.busy(row, at_node, self._now)
                self.busy_answers += 1
                self.bounced[rid] = busy + 1
                continue
            self.bounced.pop(rid, None)
            view.hold(rid, row, self._now, prompt is not None)
            if self.prefix:
                self.prefix[mi].route(row, *self.fleet.chain(rid), self._now)
            return eid
        return None

    def _prompt(self, rid: int) -> tuple[int, float]:
        """The leading block of ``rid``'s prompt and its length in tokens."""
        chain, n = self.fleet.chain(rid)
        return (chain[0] if n else 0), self.fleet.prompt_tokens(rid)

    def _cached(self, rid: int, mi: int) -> Callable[[], Floats]:
        """The prompt tokens of ``rid`` each of model ``mi``'s engines holds, by this replica's
        map of their caches."""
        return lambda: self.prefix[mi].cached_tokens(*self.fleet.chain(rid))

    def wake(self, mi: int, now: float) -> None:
        """Serve model ``mi``'s waiters while it has room; drop those that waited too long.
        Every waiter of a model gets the same answer from a full fleet, so one miss ends it."""
        queue = self.queues[mi]
        if not len(queue):
            return
        self._now = now
        for rid in queue.expired(now):
            self.reject(rid, 503, now)
        while len(queue):
            served = queue.serve(self.try_pick, 1)
            if served is None:
                return
            self.fleet.arrive(served[0], served[1], now)

    def wake_all(self, now: float) -> None:
        for mi in range(len(self.queues)):
            self.wake(mi, now)

    def take_prefixes(
        self, mi: int, rows: np.ndarray, changes: Sequence[list[Change]], taken_at: float
    ) -> None:
        """What changed in the agents' maps of these rows' prompt caches, up to ``taken_at``."""
        self.prefix[mi].take(rows.tolist(), changes, taken_at)

    def _free(self, mi: int, rid: int) -> None:
        """``rid`` (of model ``mi``) ended: its slot is released, its answer's length noted."""
        fleet = self.fleet
        uncached = (fleet.prompt_tokens(rid) - fleet.cached[rid]) * CHARS_PER_TOKEN
        self.views[mi].free(rid, fleet.arrival[rid] + fleet.ttft[rid], uncached)
        self.answer_lengths.note(self.views[mi].model, int(self._output[rid]))

    def done(self, rid: int, now: float) -> None:
        mi = self._model[rid]
        self._free(mi, rid)
        self.queues[mi].finished(self._tenant[rid])
        self.wake(mi, now)
