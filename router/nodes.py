"""A node as the router knows it: its state, its last report, this router's slots on it.

A node's state follows Octopus: *healthy*; *degraded* after 1-2 failed checks (still routed);
*unhealthy* from ``failure_threshold`` failed checks, and before its first passing check (not
routed); *draining* on operator request (no new requests, in-flight ones finish).

The router's own reservations are the exact part of each node's load: a slot is reserved when
the scheduler picks the node and released exactly once when the response ends or the client
leaves (:class:`Reservation`, which owns the slot from the pick to its release). A model goes by
several names (the node's own aliases, and the router's alias table); on each node the router
counts it under one: the id the node reports it by (:attr:`Node.model_keys`), whatever name a
request asked for.

Views kept of the nodes (the rosters of candidates, :mod:`router.roster`) watch them
(:class:`NodeWatcher`): a node tells them when its state or report changes, when it reported
again changing nothing else, and when a slot on it is taken or freed, so they never rebuild
what did not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from node_protocol.wire import LoadReport, ModelReport, PrefixSummary, Registration
from router.aliases import Aliases

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class NodeState(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"


OTHERS_SMOOTHING = 0.3  # weight of the newest report in others_in_flight (about 3 reports)
Others = TypeVar("Others", float, "npt.NDArray[np.float64]")


def smooth_others(previous: Others, reported: Others) -> Others:
    """Requests other routers (or clients) have on a node, after a report that counted
    ``reported`` of them: an average over the last few reports, as one snapshot is a second old
    and noisy, and replicas that all chase it herd (the simulator uses it on arrays)."""
    return previous + OTHERS_SMOOTHING * (reported - previous)


BREAKER_BASE_S = 1.0
BREAKER_MAX_S = 30.0
ROUTABLE = frozenset({NodeState.HEALTHY, NodeState.DEGRADED})


class NodeWatcher(Protocol):
    """A kept view of some nodes (a roster of candidates), told of what changes in them; ``row``
    is the node's place in the view, given when it started watching."""

    def node_changed(self, row: int) -> None:
        """The node's state, report or breaker changed."""

    def node_heard(self, row: int) -> None:
        """The node reported again, and nothing but the time of its report changed."""

    def counted(self, row: int, key: str, delta: int) -> None:
        """A slot on the node for the model counted under ``key`` was taken (+1) or freed (-1)."""


class PromptWatcher(Protocol):
    """A kept index of some nodes' prompt caches (:class:`router.prompt_index.PromptIndex`),
    told of what changes in them; ``row`` as for :class:`NodeWatcher`."""

    def changed(self, row: int) -> None:
        """The node's cache summaries changed, or what was routed there was dropped."""

    def routed(self, row: int, name: str, hashes: Iterable[int]) -> None:
        """This router sent a prompt there for model ``name``, whose prefix ``hashes`` the node
        holds from now on."""

    def rate_changed(self, row: int) -> None:
        """The node's prefill rate was learned anew."""


def node_id_for(group: str, name: str) -> str:
    """Stable id from group and name, so every router replica names a node the same way."""
    digest = hashlib.sha256(f"{group}/{name}".encode()).hexdigest()
    return f"node-{digest[:12]}"


@dataclass(slots=True)
class Node:
    node_id: str
    group: str
    registration: Registration
    registered_at: float  # the last (re-)registration
    static: bool = False
    owner: str | None = None  # digest of the registration token that registered it
    report: LoadReport | None = None
    report_received_at: float | None = None
    # When the node's load was last read: its last report, or a busy answer to a slot check.
    load_read_at: float | None = None
    has_agent: bool = False  # reports come from an agent (else the router polls the node)
    own_at_report: int = 0
    # The node's output rate and the streams it ran over, from the last report that saw any
    # running: a node that idles keeps its measured speed until it runs again.
    speed_sample: tuple[float, float] | None = None
    # Requests other routers (or clients) have on the node, from its reports, smoothed: one
    # snapshot is a second old and noisy, and replicas that all chase it herd.
    others_in_flight: float = 0.0
    # The others' count read from a busy answer to a slot check: it stands in for the smoothed
    # figure until the next report (which does not average it in: it is one full moment).
    busy_others: float | None = None
    failed_checks: int = 0
    ever_passed: bool = False
    _draining: bool = False
    # An operator's drain/resume at this replica that the agent has not echoed yet; the agent
    # then puts it in its reports to every replica, so all of them agree.
    drain_intent: bool | None = None
    in_flight: int = 0
    in_flight_by_model: dict[str, int] = field(default_factory=dict)  # by model key
    # Every name the node serves a model under -> that model's id in its report: the one key
    # its requests are counted under here, whichever name they asked for (see model_keys).
    model_keys: dict[str, str] = field(default_factory=dict)
    served: int = 0
    failures: int = 0
    breaker_trips: int = 0
    breaker_until: float = 0.0
    # model id or alias -> what its prompt cache likely holds, from the last report
    prefix_caches: dict[str, PrefixSummary] = field(default_factory=dict)
    # model id or alias -> prompt-prefix hashes this router sent there since that report
    routed_prefixes: dict[str, set[int]] = field(default_factory=dict)
    prefill_chars_per_s: float | None = None  # learned prefill rate (router.prefill_rates)
    # prompt characters this router routed here, and of those the ones on a prefix the node
    # likely held (router.prompt_routing): the live page's estimated cached share
    prompt_chars: int = 0
    prompt_chars_cached: int = 0
    watchers: list[tuple[NodeWatcher, int]] = field(default_factory=list)
    prompt_watchers: list[tuple[PromptWatcher, int]] = field(default_factory=list)

    def changed(self) -> None:
        """Tell the views that watch this node that its state, report or breaker changed."""
        for watcher, row in self.watchers:
            watcher.node_changed(row)

    def heard(self) -> None:
        """Tell the views that watch this node that it reported again, changing nothing else."""
        for watcher, row in self.watchers:
            watcher.node_heard(row)

    def prompts_changed(self) -> None:
        """Tell the prompt indexes that this node's cache summaries or routed prompts changed."""
        for watcher, row in self.prompt_watchers:
            watcher.changed(row)

    def prompts_routed(self, name: str, hashes: Iterable[int]) -> None:
        """Tell the prompt indexes that a prompt was routed here (its prefix ``hashes``)."""
        for watcher, row in self.prompt_watchers:
            watcher.routed(row, name, hashes)

    def prefill_rate_changed(self) -> None:
        """Tell the prompt indexes that this node's prefill rate changed."""
        for watcher, row in self.prompt_watchers:
            watcher.rate_changed(row)

    def seen_state(self) -> tuple[object, ...]:
        """What taking a report changes that views of the node read, but the time and the
        report itself (compared apart: :func:`same_report`)."""
        return (self.others_in_flight, self.busy_others, self.own_at_report, self.speed_sample,
                self.has_agent, self.failed_checks, self.ever_passed)  # fmt: skip

    @property
    def draining(self) -> bool:
        """No new requests (operator's drain, here or told through the agent)."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        if value != self._draining:
            self._draining = value
            self.changed()

    def breaker_allows(self, now: float) -> bool:
        """Closed: yes. Open (cooling down after a failed connection): no. Half-open (cooled
        down, not yet proven): one probe request at a time."""
        if self.breaker_trips == 0:
            return True
        return now >= self.breaker_until and self.in_flight == 0

    @property
    def name(self) -> str:
        return self.registration.name

    @property
    def base_url(self) -> str:
        return self.registration.base_url

    def state(self, threshold: int) -> NodeState:
        if self.draining:
            return NodeState.DRAINING
        if not self.ever_passed or self.failed_checks >= threshold:
            return NodeState.UNHEALTHY
        if self.failed_checks > 0:
            return NodeState.DEGRADED
        return NodeState.HEALTHY

    def models(self) -> tuple[ModelReport, ...]:
        return self.report.models if self.report is not None else ()

    def check_passed(self) -> None:
        if self.failed_checks or not self.ever_passed:
            self.failed_checks = 0
            self.ever_passed = True
            self.changed()

    def check_failed(self, threshold: int, *, definitive: bool = False) -> None:
        self.failed_checks = threshold if definitive else self.failed_checks + 1
        self.changed()


def model_keys(models: tuple[ModelReport, ...], aliases: Aliases) -> dict[str, str]:
    """Each name a node serves a model under, mapped to the id it reports that model by: its
    ids and aliases first, then the other names the router's alias table gives them."""
    keys: dict[str, str] = {}
    for entry in models:
        for name in (entry.id, *entry.aliases):
            keys.setdefault(name, entry.id)
    if aliases:
        for name, key in list(keys.items()):
            for other in aliases.names(name):
                keys.setdefault(other, key)
    return keys


class Reservation:
    """One request's slot on one node, owned from the pick to its release: counted on the node
    (and in the views watching it) when made, uncounted by :meth:`release`, which does it once
    however often it is called and then runs ``on_release`` (admission hands the slot on). A
    context manager: leaving the block releases the slot, whichever way the block ends.
    ``model`` may be any name the node serves the model under: the slot is counted under the
    node's key for it."""

    __slots__ = ("_on_release", "_released", "model", "node")

    def __init__(
        self, node: Node, model: str, on_release: Callable[[], None] | None = None
    ) -> None:
        self.node = node
        self.model = model = node.model_keys.get(model, model)
        self._on_release = on_release
        self._released = False
        node.in_flight += 1
        node.in_flight_by_model[model] = node.in_flight_by_model.get(model, 0) + 1
        for watcher, row in node.watchers:
            watcher.counted(row, model, 1)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        node, model = self.node, self.model
        node.in_flight -= 1
        left = node.in_flight_by_model[model] - 1
        if left:
            node.in_flight_by_model[model] = left
        else:
            del node.in_flight_by_model[model]
        for watcher, row in node.watchers:
            watcher.counted(row, model, -1)
        if self._on_release is not None:
            self._on_release()

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def same_report(a: LoadReport | None, b: LoadReport | None) -> bool:
    """Two reports that say the same, whenever they were sent."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    return (a.seq, a.backend_kind, a.backend_health, a.in_flight, a.models, a.gpus,
            a.queue_waiting, a.queue_running, a.output_tokens_per_s, a.draining) == (
            b.seq, b.backend_kind, b.backend_health, b.in_flight, b.models, b.gpus,
            b.queue_waiting, b.queue_running, b.output_tokens_per_s, b.draining)  # fmt: skip
