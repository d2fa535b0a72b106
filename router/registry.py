"""Server groups and their nodes (:mod:`router.nodes`): the router's soft state.

A load report with a healthy backend, or a passing health poll, is a passing check; a missed
report, a failed poll, a backend the agent reports as down and a failed connection to the node
are failed checks (see :class:`router.nodes.NodeState`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from node_protocol.wire import LoadReport, ModelReport, Registration
from router.aliases import Aliases
from router.nodes import (
    BREAKER_BASE_S,
    BREAKER_MAX_S,
    ROUTABLE,
    Node,
    NodeState,
    NodeWatcher,
    Reservation,
    model_keys,
    node_id_for,
    same_report,
    smooth_others,
)

__all__ = [
    "BREAKER_MAX_S",
    "MAX_GROUPS",
    "MAX_NODES_PER_GROUP",
    "ROUTABLE",
    "Group",
    "Node",
    "NodeState",
    "NodeWatcher",
    "Registry",
    "RegistryFull",
    "Reservation",
    "node_id_for",
    "smooth_others",
]

# Registrations may come from anywhere a token (or loopback) allows: the nodes and groups they
# make are kept to these bounds (those declared in config are not counted against them).
MAX_GROUPS = 256
MAX_NODES_PER_GROUP = 1024


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
    prefix_routing: bool = True  # least_loaded weighs the nodes' prompt caches
    nodes: dict[str, Node] = field(default_factory=dict)
    # model id or alias -> ids of nodes that list it (loaded or not)
    model_index: dict[str, set[str]] = field(default_factory=dict)
    # Counts the changes of who serves what: a view of the nodes made before it is outdated.
    generation: int = 0

    def reindex(self) -> None:
        """The index anew (after a node went). Views of the nodes made before are outdated:
        they are made again when next asked for (:class:`router.roster.Rosters`)."""
        index: dict[str, set[str]] = {}
        for node in self.nodes.values():
            for model in node.models():
                for key in (model.id, *model.aliases):
                    index.setdefault(key, set()).add(node.node_id)
        self.model_index = index
        self.generation += 1

    def index_node(self, node: Node, old_models: tuple[ModelReport, ...]) -> None:
        """A node now lists other models (or other names for them) than ``old_models``."""
        index = self.model_index
        for model in old_models:
            for key in (model.id, *model.aliases):
                ids = index.get(key)
                if ids is not None:
                    ids.discard(node.node_id)
                    if not ids:
                        del index[key]
        for model in node.models():
            for key in (model.id, *model.aliases):
                index.setdefault(key, set()).add(node.node_id)
        self.generation += 1

    def nodes_serving(self, model: str) -> Iterator[Node]:
        for node_id in self.model_index.get(model, ()):
            yield self.nodes[node_id]


def _names(models: tuple[ModelReport, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """What a group's index keeps of a node's models: their ids and aliases."""
    return [(m.id, m.aliases) for m in models]


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
            if reg != node.registration:
                node.registration = reg
                node.changed()
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
        node.watchers.clear()
        node.prompt_watchers.clear()
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
        seen, old, had_agent = node.seen_state(), node.report, node.has_agent
        old_models = node.models()
        busy = report.in_flight
        if report.queue_waiting is not None:
            busy = max(busy, report.queue_waiting + (report.queue_running or 0))
        others = max(0, busy - node.in_flight)
        if node.report is None or node.busy_others is not None:  # first, or after a busy answer
            node.others_in_flight = float(others)
        else:
            node.others_in_flight = smooth_others(node.others_in_flight, float(others))
        if report is not old:
            node.prefix_caches = report.prefix_caches_by_name()
            for name in node.prefix_caches:  # its agent saw what this router sent before
                node.routed_prefixes.pop(name, None)
            node.prompts_changed()
        node.report = report
        node.report_received_at = node.load_read_at = now
        running = _streams(report)
        if report.output_tokens_per_s and running > 0:
            node.speed_sample = (report.output_tokens_per_s, running)
        node.busy_others = None
        node.has_agent = node.has_agent or from_agent
        node.own_at_report = node.in_flight
        if node.drain_intent is None:
            node.draining = report.draining
        elif report.draining == node.drain_intent:
            node.drain_intent = None
        cooled = False
        if report.backend_health == "ok":
            node.check_passed()
            if from_agent and node.breaker_until > now:
                # The agent vouches for its backend again (an engine restarted behind it): end
                # the cooldown. The breaker stays half-open: one request proves the node.
                node.breaker_until, cooled = now, True
        else:
            node.check_failed(self.threshold, definitive=report.backend_health == "unhealthy")
        names_moved = False
        if report.models != old_models:
            node.model_keys = model_keys(report.models, self.aliases)
            names_moved = _names(report.models) != _names(old_models)
        if (
            names_moved
            or old is None
            or report.backend_kind != old.backend_kind
            or node.has_agent != had_agent  # a node without an agent speaks fewer surfaces
        ):
            self.groups[node.group].index_node(node, old_models)  # who serves what, and how
        if not cooled and node.seen_state() == seen and same_report(report, old):
            node.heard()
        else:
            node.changed()

    def note_busy(self, node: Node, in_flight: int, now: float) -> None:
        """The node's agent answered a slot check busy (``NODE_BUSY_HEADER``) with
        its count of requests in flight: a reading of its load as fresh as a report, taken
        after this router released the slot it had reserved there. The rest of the last
        report (models, speed, health) stands."""
        node.busy_others = float(max(0, in_flight - node.in_flight))
        node.own_at_report = node.in_flight
        if node.report is not None:
            node.load_read_at = now
        node.changed()

    def connection_failed(self, node: Node, now: float) -> None:
        """The router could not get an answer from the node: a failed check, and the breaker
        opens at once, for longer each time it trips in a row."""
        node.failures += 1
        node.check_failed(self.threshold)
        node.breaker_trips += 1
        doublings = min(node.breaker_trips - 1, 16)  # the cap comes long before 2**16
        cooldown = min(BREAKER_MAX_S, BREAKER_BASE_S * 2**doublings)
        node.breaker_until = now + cooldown
        node.changed()

    @staticmethod
    def connection_ok(node: Node) -> None:
        if node.breaker_trips:
            node.breaker_trips = 0
            node.changed()


def _streams(report: LoadReport) -> float:
    """The number of streams the report's token rate was shared by: the mean in flight over
    the rate's own window where the agent measured it (the count at the moment of the report
    credits a node that was busy all window and nearly idle at its end with several times its
    speed, and every replica would herd onto it), else the count it reports."""
    if report.mean_in_flight is not None and report.mean_in_flight > 0:
        return report.mean_in_flight
    return report.queue_running or report.in_flight
