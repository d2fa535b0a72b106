"""Server groups and their nodes: the router's soft state.

A node's state follows Octopus: *healthy*; *degraded* after 1-2 failed checks (still routed);
*unhealthy* from ``failure_threshold`` failed checks, and before its first passing check (not
routed); *draining* on operator request (no new requests, in-flight ones finish). A load report
with a healthy backend, or a passing health poll, is a passing check; a missed report, a failed
poll, a backend the agent reports as down and a failed connection to the node are failed checks.

The router's own reservations are the exact part of each node's load: a slot is reserved when
the scheduler picks the node and released exactly once when the response ends or the client
leaves (:class:`Reservation`). A model goes by several names (the node's own aliases, and the
router's alias table); on each node the router counts it under one: the id the node reports it
by (:attr:`Node.model_keys`), whatever name a request asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

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
# Registrations may come from anywhere a token (or loopback) allows: the nodes and groups they
# make are kept to these bounds (those declared in config are not counted against them).
MAX_GROUPS = 256
MAX_NODES_PER_GROUP = 1024
BREAKER_MAX_S = 30.0
ROUTABLE = frozenset({NodeState.HEALTHY, NodeState.DEGRADED})


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
    # Requests other routers (or clients) have on the node, from its reports, smoothed: one
    # snapshot is a second old and noisy, and replicas that all chase it herd.
    others_in_flight: float = 0.0
    # The others' count read from a busy answer to a slot check: it stands in for the smoothed
    # figure until the next report (which does not average it in: it is one full moment).
    busy_others: float | None = None
    failed_checks: int = 0
    ever_passed: bool = False
    draining: bool = False
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
        self.failed_checks = 0
        self.ever_passed = True

    def check_failed(self, threshold: int, *, definitive: bool = False) -> None:
        self.failed_checks = threshold if definitive else self.failed_checks + 1


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
    """One request's slot on one node; :meth:`release` is idempotent. ``model`` may be any
    name the node serves the model under: the slot is counted under the node's key for it."""

    __slots__ = ("_released", "model", "node")

    def __init__(self, node: Node, model: str) -> None:
        self.node = node
        self.model = model = node.model_keys.get(model, model)
        self._released = False
        node.in_flight += 1
        node.in_flight_by_model[model] = node.in_flight_by_model.get(model, 0) + 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        node = self.node
        node.in_flight -= 1
        left = node.in_flight_by_model[self.model] - 1
        if left:
            node.in_flight_by_model[self.model] = left
        else:
            del node.in_flight_by_model[self.model]


class RegistryFull(Exception):
    """A registration past :data:`MAX_GROUPS` groups or :data:`MAX_NODES_PER_GROUP` nodes."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Group:
    name: str
    policy: str
    declared: bool = False  # in config (or the default group): stays when it has no nodes
    nodes: dict[str, Node] = field(default_factory=dict)
    # model id or alias -> ids of nodes that list it (loaded or not)
    model_index: dict[str, set[str]] = field(default_factory=dict)

    def reindex(self) -> None:
        index: dict[str, set[str]] = {}
        for node in self.nodes.values():
            for model in node.models():
                for key in (model.id, *model.aliases):
                    index.setdefault(key, set()).add(node.node_id)
        self.model_index = index

    def nodes_serving(self, model: str) -> Iterator[Node]:
        for node_id in self.model_index.get(model, ()):
            yield self.nodes[node_id]


def _last_heard(node: Node) -> float:
    received = node.report_received_at
    return node.registered_at if received is None else max(received, node.registered_at)


class Registry:
    """All groups of this router. Owned by the event loop: no locks, no I/O."""

    def __init__(
        self,
        default_policy: str,
        failure_threshold: int,
        aliases: Aliases | None = None,
        *,
        max_groups: int = MAX_GROUPS,
        max_nodes_per_group: int = MAX_NODES_PER_GROUP,
    ) -> None:
        self.groups: dict[str, Group] = {}
        self.default_policy = default_policy
        self.threshold = failure_threshold
        self.max_groups = max_groups
        self.max_nodes_per_group = max_nodes_per_group
        # Called with each node taken out (and whether its group went with it), so what is
        # kept per node elsewhere (metric series, pooled connections) goes too.
        self.on_removed: list[Callable[[Node, bool], None]] = []
        self.aliases = aliases or Aliases({})

    def ensure_group(self, name: str, policy: str | None = None) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = Group(name=name, policy=policy or self.default_policy)
            self.groups[name] = group
        return group

    def register(
        self, group_name: str, reg: Registration, now: float, *, static: bool = False
    ) -> tuple[Node, bool]:
        """Add or refresh a node; registration is idempotent by name. Returns (node, created).
        Raises :class:`RegistryFull` for a new node past the bounds (static ones are exempt)."""
        node_id = node_id_for(group_name, reg.name)
        node = self.find(group_name, node_id)
        if node is not None:
            node.registration = reg
            node.registered_at = now  # heard from: it does not expire
            return node, False
        if not static:
            self._check_room(group_name)
        group = self.ensure_group(group_name)
        node = Node(node_id=node_id, group=group_name, registration=reg, registered_at=now)
        node.static = static
        group.nodes[node_id] = node
        return node, True

    def find(self, group_name: str, node_id: str) -> Node | None:
        group = self.groups.get(group_name)
        return group.nodes.get(node_id) if group is not None else None

    def _check_room(self, group_name: str) -> None:
        group = self.groups.get(group_name)
        if group is None:
            made = sum(1 for g in self.groups.values() if not g.declared)
            if made >= self.max_groups:
                raise RegistryFull(
                    f"this router holds its limit of {self.max_groups} server groups made by "
                    "registrations",
                    "too_many_groups",
                )
            return
        registered = sum(1 for n in group.nodes.values() if not n.static)
        if registered >= self.max_nodes_per_group:
            raise RegistryFull(
                f"group '{group_name}' holds its limit of {self.max_nodes_per_group} nodes",
                "too_many_nodes",
            )

    def remove(self, group_name: str, node_id: str) -> Node | None:
        """Take a node out; a group that registrations made goes with its last node."""
        group = self.groups.get(group_name)
        if group is None:
            return None
        node = group.nodes.pop(node_id, None)
        if node is None:
            return None
        group.reindex()
        group_gone = not group.nodes and not group.declared
        if group_gone:
            del self.groups[group_name]
        for listener in self.on_removed:
            listener(node, group_gone)
        return node

    def expire(self, now: float, silent_s: float) -> list[Node]:
        """Remove every registered (not static) node not heard from for ``silent_s``: no
        report, poll or registration. Returns those removed."""
        gone = [
            node
            for group in self.groups.values()
            for node in group.nodes.values()
            if not node.static and now - _last_heard(node) > silent_s
        ]
        for node in gone:
            self.remove(node.group, node.node_id)
        return gone

    def apply_report(
        self, node: Node, report: LoadReport, now: float, *, from_agent: bool = True
    ) -> None:
        """Take a load report: it is a health check and the node's new view of its models."""
        old_models = node.models()
        busy = report.in_flight
        if report.queue_waiting is not None:
            busy = max(busy, report.queue_waiting + (report.queue_running or 0))
        others = max(0, busy - node.in_flight)
        if node.report is None or node.busy_others is not None:  # first, or after a busy answer
            node.others_in_flight = float(others)
        else:
            node.others_in_flight = smooth_others(node.others_in_flight, float(others))
        node.report = report
        node.prefix_caches = report.prefix_caches_by_name()
        node.report_received_at = node.load_read_at = now
        node.busy_others = None
        node.has_agent = node.has_agent or from_agent
        node.own_at_report = node.in_flight
        if node.drain_intent is None:
            node.draining = report.draining
        elif report.draining == node.drain_intent:
            node.drain_intent = None
        if report.backend_health == "ok":
            node.check_passed()
            if from_agent and node.breaker_until > now:
                # The agent vouches for its backend again (an engine restarted behind it): end
                # the cooldown. The breaker stays half-open: one request proves the node.
                node.breaker_until = now
        else:
            node.check_failed(self.threshold, definitive=report.backend_health == "unhealthy")
        if report.models != old_models:
            node.model_keys = model_keys(report.models, self.aliases)
            self.groups[node.group].reindex()

    def note_busy(self, node: Node, in_flight: int, now: float) -> None:
        """The node's agent answered a slot check busy (``NODE_BUSY_HEADER``) with
        its count of requests in flight: a reading of its load as fresh as a report, taken
        after this router released the slot it had reserved there. The rest of the last
        report (models, speed, health) stands."""
        node.busy_others = float(max(0, in_flight - node.in_flight))
        node.own_at_report = node.in_flight
        if node.report is not None:
            node.load_read_at = now

    def connection_failed(self, node: Node, now: float) -> None:
        """The router could not get an answer from the node: a failed check, and the breaker
        opens at once, for longer each time it trips in a row."""
        node.failures += 1
        node.check_failed(self.threshold)
        node.breaker_trips += 1
        doublings = min(node.breaker_trips - 1, 16)  # the cap comes long before 2**16
        cooldown = min(BREAKER_MAX_S, BREAKER_BASE_S * 2**doublings)
        node.breaker_until = now + cooldown

    @staticmethod
    def connection_ok(node: Node) -> None:
        node.breaker_trips = 0
