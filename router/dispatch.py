"""From a parsed request to a node: the part every API surface shares.

A surface (OpenAI, Anthropic Messages, Ollama native, Triton) reads what it needs from the
request and hands a :class:`Target` to :meth:`Dispatcher.dispatch`, which resolves the model
(aliases included), keeps only the nodes that serve it and speak the surface (an agent may
translate it; a node without one must speak it itself), asks the scheduler for an order, and
forwards. Every request, answered or refused, leaves one :class:`RequestRecord` in the metrics,
the live page and the log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from router.access_log import ACCESS_LOG
from router.admission import ADMISSION, Rejected
from router.aliases import Aliases, node_name_for
from router.auth import TENANT
from router.dashboard import ACTIVITY
from router.errors import (
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    RouterError,
    UpstreamError,
)
from router.limits import TenantRateLimiter
from router.metrics import METRICS
from router.proxy import FORWARDER, NodeBusy, Outbound
from router.records import RequestRecord
from router.registry import Group, Registry, Reservation
from router.scheduling import Candidate, Scheduler, candidate_for, slot_check
from router.settings import RouterSettings

MAX_ID_HEADER = 256


def id_header(headers: Mapping[str, str], name: str) -> str | None:
    """A tenant, correlation or session header, checked before it is forwarded anywhere."""
    value = headers.get(name)
    if value is None:
        return None
    if len(value) > MAX_ID_HEADER or not value.isascii() or not value.isprintable():
        raise InvalidRequest(
            f"header {name} must be printable ASCII of at most {MAX_ID_HEADER} characters",
            param=name,
        )
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """One request as a surface understood it."""

    node_path: str
    model: str
    body: bytes
    kinds: frozenset[str] | None = None  # backend kinds that speak this surface; None = all
    # The kinds an agentless node must be to get it (no agent translates for such a node);
    # None: the same as ``kinds``.
    agentless_kinds: frozenset[str] | None = None
    model_in_body: bool = True
    stream: bool | None = None  # what kind of answer is due (None: do not check it)
    done_marker: bool = False  # an OpenAI stream, ending with data: [DONE]


class Dispatcher:
    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        scheduler: Scheduler,
        aliases: Aliases,
        rate_limiter: TenantRateLimiter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate_limiter = rate_limiter
        self._started = clock()
        # A fresh replica has not heard from every agent yet: an unknown model then means
        # "not yet", so it answers 503 (retry, elsewhere) rather than 404.
        self._warmup_s = settings.warmup

        self._settings = settings
        self._registry = registry
        self._scheduler = scheduler
        self._aliases = aliases
        self._clock = clock
        self._ids = random.Random()  # correlation ids: unique, not secret (no syscall each)

    def group_of(self, request: web.Request) -> Group:
        name = request.match_info.get("group", self._settings.default_group)
        group = self._registry.groups.get(name)
        if group is None:
            raise NotFound(f"no server group named '{name}'", code="group_not_found")
        return group

    def names(self, model: str) -> tuple[str, ...]:
        return self._aliases.names(model)

    async def read_body(self, request: web.Request) -> bytes:
        limit = self._settings.max_body_bytes
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if request.content.is_eof():  # all of it came with the headers: nothing to wait for
            return await request.read()
        try:
            async with asyncio.timeout(self._settings.client_body_timeout_s):
                return await request.read()
        except TimeoutError as exc:
            raise RequestTimeout(
                f"request body not received within {self._settings.client_body_timeout_s:g}s"
            ) from exc

    async def dispatch(
        self,
        request: web.Request,
        endpoint: str,
        build: Callable[[bytes], Target],
    ) -> web.StreamResponse:
        """Route one request; ``build`` turns the body into a Target or raises RouterError."""
        group = self.group_of(request)
        headers = request.headers
        correlation_id = id_header(headers, "X-Octopus-Correlation-Id")
        record = RequestRecord(
            group=group.name,
            model="-",
            endpoint=endpoint,
            tenant=request.get(TENANT) or id_header(headers, "X-Octopus-Tenant-Id"),
            correlation_id=correlation_id or f"{self._ids.getrandbits(128):032x}",
        )
        metrics = request.app[METRICS]
        in_progress, by_group = metrics.in_progress, (group.name,)
        in_progress.add(by_group, 1)
        try:
            if self._rate_limiter:
                self._rate_limiter.admit(record.tenant, self._clock())
            target = build(await self.read_body(request))
            return await self._send(request, group, target, record)
        except RouterError as err:
            record.status = err.status
            record.error = err.code or err.type
            metrics.rejections.labels(group.name, record.error).inc()
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            record.status = 499
            record.error = record.error or "client_gone"
            raise
        finally:
            record.close(time.perf_counter())
            in_progress.add(by_group, -1)
            if self._rate_limiter:
                self._rate_limiter.charge_tokens(record.tenant, record.output_tokens, self._clock())
            metrics.observe(record)
            request.app[ACTIVITY].note(record)
            request.app[ACCESS_LOG].write(record)

    async def _send(
        self, request: web.Request, group: Group, target: Target, record: RequestRecord
    ) -> web.StreamResponse:
        model = target.model
        names = self._aliases.names(model)
        serving = {n.node_id: n for name in names for n in group.nodes_serving(name)}
        if target.kinds is not None:
            kinds, bare = target.kinds, target.agentless_kinds or target.kinds
            serving = {
                k: n
                for k, n in serving.items()
                if n.report is not None
                and n.report.backend_kind in (kinds if n.has_agent else bare)
            }
        if not serving:
            record.model = "other"
            if self._clock() - self._started < self._warmup_s:
                raise NoCapacity(
                    f"this router is starting and has not yet heard of a node serving '{model}'",
                    retry_after_s=1,
                )
            raise ModelNotFound(
                f"model '{model}' is not served by group '{group.name}'"
                + (" on a backend that speaks this API" if target.kinds else ""),
                param="model",
            )
        record.model = model
        session_id = id_header(request.headers, "X-Octopus-Session-Id")
        node_names: dict[str, str] = {}
        key = f"{group.name}/{self._aliases.canonical(model)}"  # one queue whatever the alias
        busy = 0  # busy answers to slot checks: the request goes back to the head of its queue
        admission = request.app[ADMISSION]
        settings = self._settings

        def candidates() -> list[Candidate]:
            now = self._clock()
            found = []
            nodes = group.nodes
            for node in serving.values():
                # A node removed since (deregistered, expired) is no candidate any more.
                if nodes.get(node.node_id) is not node or not node.breaker_allows(now):
                    continue
                name = node_name_for(node, names) or model
                candidate = candidate_for(
                    node,
                    name,
                    self._registry.threshold,
                    now,
                    3 * settings.report_interval_s,
                    cap_factor=settings.cap_factor,
                    replicas=settings.router_replicas,
                    replica_salt=settings.router_id,
                )
                if candidate is not None:
                    found.append(candidate)
                    if name != model:
                        node_names[node.node_id] = name
            return found

        found = candidates()
        first_pick = [found]  # the first pick reuses what was just built

        def pick() -> Picked | None:
            """Choose and reserve in one step (no gap for another request to slip into)."""
            waiting = admission.waiting(key)
            built = first_pick.pop() if first_pick else None
            if built is None or waiting:  # picked later, from the queue: build anew
                built = candidates()
                if not built:  # no node can take it now, full or not: do not wait for one
                    raise no_node()
            order = self._scheduler.order(
                group.policy,
                key,
                built,
                limit=settings.max_attempts,
                affinity=session_id or record.tenant,
                waiting=waiting,
            )
            if not order:
                return None
            node = group.nodes[order[0]]
            check = 0
            if settings.router_replicas > 1 and node.has_agent:  # may be another's slot by now
                c = next(c for c in built if c.node_id == node.node_id)
                check = slot_check(c.load, c.slots, c.cap, c.replicas, busy)
            return Picked(order, Reservation(node, model), check)

        def no_node() -> NoCapacity:
            cooling = any(not n.breaker_allows(self._clock()) for n in serving.values())
            reason = " (nodes are cooling down after errors)" if cooling else ""
            return NoCapacity(
                f"no healthy node serves model '{model}' right now{reason}",
                retry_after_s=settings.retry_after_s,
            )

        if not found:
            raise no_node()
        out = Outbound(
            path=target.node_path,
            body=target.body,
            model=model,
            correlation_id=record.correlation_id,
            tenant_id=record.tenant,
            session_id=session_id,
            node_models=node_names,
            model_in_body=target.model_in_body,
            stream=target.stream,
            done_marker=target.done_marker,
        )
        queued_at = time.perf_counter()
        while True:
            try:
                ticket = await admission.admit(
                    key,
                    record.tenant,
                    pick,
                    returning=busy > 0,
                    # after max_attempts busy answers in a row, wait for capacity news
                    wait_first=busy > 0 and busy % settings.max_attempts == 0,
                )
            except Rejected as exc:
                error = RateLimited if exc.status == 429 else NoCapacity
                raise error(
                    f"no capacity for '{model}': {exc.reason}",
                    code="queue_full" if exc.status == 429 else "no_capacity",
                    retry_after_s=exc.retry_after_s,
                ) from None
            record.queue_wait_s = time.perf_counter() - queued_at
            record.admitted = True
            grant = ticket.grant
            try:
                return await request.app[FORWARDER].forward(
                    request,
                    group,
                    grant.order,
                    out,
                    record,
                    first=grant.reservation,
                    on_release=lambda: admission.wake(key),
                    slot_check=grant.slot_check,
                )
            except NodeBusy:
                busy += 1
            except UpstreamError:
                # Every node tried failed before answering (a dead engine behind its agent)
                # while the others were full: wait for their slot rather than fail, within
                # max_attempts. A timeout (UpstreamTimeout) is not retried here.
                no_answer = record.t_upstream_headers is None
                if not no_answer or record.attempts >= settings.max_attempts or not candidates():
                    raise
            finally:
                ticket.release()


@dataclass(slots=True)
class Picked:
    """What admission grants: the nodes in order, the first one's slot already reserved."""

    order: list[str]
    reservation: Reservation
    slot_check: int = 0  # the first node's slots, for its agent to check (0: no check)

    def release(self) -> None:
        self.reservation.release()


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
