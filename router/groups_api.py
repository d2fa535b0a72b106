"""The Octopus server-group API: registration, load reports, drain, deregistration, views."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from node_protocol.wire import LoadReport, Registration, WireError
from router.admission import ADMISSION
from router.auth import Authenticator, HostAllowlist
from router.errors import Forbidden, InvalidRequest, NotFound
from router.registry import ROUTABLE, Group, Node, Registry, RegistryFull, node_id_for
from router.settings import InvalidGroupName, check_group_name

log = logging.getLogger("router.groups")
MAX_CONTROL_BODY = 1024 * 1024


def node_view(node: Node, threshold: int, now: float) -> dict[str, Any]:
    reg = node.registration
    age = None if node.report_received_at is None else round(now - node.report_received_at, 3)
    return {
        "nodeId": node.node_id,
        "name": reg.name,
        "groupName": node.group,
        "baseUrl": reg.base_url,
        "healthUrl": reg.health_url,
        "weight": reg.weight,
        "metadata": reg.metadata,
        "status": node.state(threshold).value,
        "inRotation": node.state(threshold) in ROUTABLE and node.breaker_allows(now),
        "breakerTrips": node.breaker_trips,
        "failedChecks": node.failed_checks,
        "static": node.static,
        "inFlight": node.in_flight,
        "served": node.served,
        "failures": node.failures,
        "reportAgeS": age,
        "report": node.report.to_json() if node.report is not None else None,
    }


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


async def _read_json(request: web.Request) -> Any:
    if (request.content_length or 0) > MAX_CONTROL_BODY:
        raise InvalidRequest("control request body is too large")
    body = await request.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc


def _check_owner(token: str | None, node: Node) -> None:
    """Only the agent that registered a node (same token) or an admin may act for it."""
    if node.owner is not None and token is not None and token != node.owner:
        raise Forbidden("this node was registered with a different token")


class GroupsApi:
    """The routes under ``/api/server-groups``. Registration, reports and deregistration are
    checked here (:meth:`Authenticator.agent`); the views and drain by the auth middleware."""

    def __init__(
        self,
        registry: Registry,
        clock: Callable[[], float],
        allowlist: HostAllowlist,
        auth: Authenticator,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._allowlist = allowlist
        self._auth = auth

    def routes(self) -> list[web.RouteDef]:
        base = "/api/server-groups"
        return [
            web.get(base, self.list_groups),
            web.get(f"{base}/{{group}}/nodes", self.list_nodes),
            web.post(f"{base}/{{group}}/nodes", self.register),
            web.get(f"{base}/{{group}}/nodes/{{node_id}}", self.get_node),
            web.put(f"{base}/{{group}}/nodes/{{node_id}}/report", self.report),
            web.delete(f"{base}/{{group}}/nodes/{{node_id}}", self.deregister),
            web.post(f"{base}/{{group}}/nodes/{{node_id}}/drain", self.drain),
            web.post(f"{base}/{{group}}/nodes/{{node_id}}/resume", self.resume),
        ]

    def _group(self, request: web.Request) -> Group:
        name = request.match_info["group"]
        group = self._registry.groups.get(name)
        if group is None:
            raise NotFound(f"no server group named '{name}'", code="group_not_found")
        return group

    def _node(self, request: web.Request) -> Node:
        group = self._group(request)
        node = group.nodes.get(request.match_info["node_id"])
        if node is None:
            raise NotFound("no such node in this group", code="node_not_found")
        return node

    async def list_groups(self, request: web.Request) -> web.Response:
        threshold = self._registry.threshold
        groups = [
            {
                "name": g.name,
                "policy": g.policy,
                "nodes": len(g.nodes),
                "routableNodes": sum(1 for n in g.nodes.values() if n.state(threshold) in ROUTABLE),
                "models": sorted(g.model_index),
            }
            for g in self._registry.groups.values()
        ]
        return _json({"groups": groups})

    async def list_nodes(self, request: web.Request) -> web.Response:
        group = self._group(request)
        now = self._clock()
        nodes = [node_view(n, self._registry.threshold, now) for n in group.nodes.values()]
        return _json({"groupName": group.name, "policy": group.policy, "nodes": nodes})

    async def get_node(self, request: web.Request) -> web.Response:
        return _json(node_view(self._node(request), self._registry.threshold, self._clock()))

    async def register(self, request: web.Request) -> web.Response:
        token = self._auth.agent(request)
        group_name = request.match_info["group"]
        try:
            check_group_name(group_name)
        except InvalidGroupName as exc:
            raise InvalidRequest(str(exc), param="group") from exc
        raw = await _read_json(request)
        try:
            reg = Registration.from_json(raw)
            report = LoadReport.from_json(raw["report"]) if raw.get("report") else None
        except WireError as exc:
            raise InvalidRequest(str(exc)) from exc
        if not self._allowlist.allows(reg.base_url):
            raise Forbidden("baseUrl is not on this router's registration allowlist")
        existing = self._registry.find(group_name, node_id_for(group_name, reg.name))
        if existing is not None:
            _check_owner(token, existing)
        now = self._clock()
        try:
            node, created = self._registry.register(group_name, reg, now)
        except RegistryFull as exc:
            hint = "deregister some, or let silent ones expire"
            raise Forbidden(f"{exc}: {hint}", code=exc.code) from None
        if created:
            node.owner = token
        if report is not None:
            self._registry.apply_report(node, report, now)
        request.config_dict[ADMISSION].wake_all()  # capacity may have appeared
        log.info(
            "node %s %s in group %s",
            reg.name,
            "registered" if created else "re-registered",
            group_name,
        )
        body = {
            "nodeId": node.node_id,
            "groupName": group_name,
            "status": node.state(self._registry.threshold).value,
            "drain": node.draining,
        }
        return _json(body, status=201 if created else 200)

    async def report(self, request: web.Request) -> web.Response:
        token = self._auth.agent(request)
        node = self._node(request)
        _check_owner(token, node)
        raw = await _read_json(request)
        try:
            report = LoadReport.from_json(raw)
        except WireError as exc:
            raise InvalidRequest(str(exc)) from exc
        self._registry.apply_report(node, report, self._clock())
        request.config_dict[ADMISSION].wake_all()  # capacity may have appeared
        return _json(self._node_status(node))

    def _node_status(self, node: Node) -> dict[str, Any]:
        """What the agent learns from each answer: its state here, and whether to drain."""
        state = node.state(self._registry.threshold).value
        return {"nodeId": node.node_id, "status": state, "drain": node.draining}

    async def deregister(self, request: web.Request) -> web.Response:
        token, admin = self._auth.agent_or_admin(request)
        node = self._node(request)
        if not admin:
            _check_owner(token, node)
        self._registry.remove(node.group, node.node_id)
        log.info("node %s deregistered from group %s", node.name, node.group)
        return _json({"nodeId": node.node_id, "removed": True})

    async def drain(self, request: web.Request) -> web.Response:
        """No new requests for the node, here at once and, through its agent, at every replica."""
        return _json(self._set_drain(self._node(request), True))

    async def resume(self, request: web.Request) -> web.Response:
        return _json(self._set_drain(self._node(request), False))

    def _set_drain(self, node: Node, draining: bool) -> dict[str, Any]:
        node.draining = draining
        if not node.static:
            node.drain_intent = draining
        return self._node_status(node)
