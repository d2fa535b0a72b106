"""From a parsed request to a node: the part every API surface shares.

A surface (OpenAI, Anthropic Messages, OpenAI Responses, Ollama native, Triton) reads what it
needs from the request and hands a :class:`Target` to :meth:`Dispatcher.dispatch`, which
resolves the model (aliases included), takes the roster of the nodes that serve it and speak the
surface (an agent may translate it; a node without one must speak it itself:
:mod:`router.roster`), and hands the request to a :class:`Dispatch`: it picks and reserves a
node, waits in the model's queue while every node is full, and forwards. Every request,
answered or refused, leaves one :class:`RequestRecord` in the metrics, the live page and the
log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from router.admission import ADMISSION, Rejected, Ticket
from router.aliases import Aliases
from router.auth import TENANT
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
from router.ledger import Ledger
from router.prompt_routing import PromptRoute
from router.proxy import FORWARDER, NodeBusy, Outbound
from router.records import RequestRecord
from router.registry import Group, Registry, Reservation
from router.roster import CandidateRules, Roster, Rosters
from router.scheduling import Scheduler
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
    # The body as the surface parsed it: its prompt, where the path carries one, is routed
    # on the nodes' prompt caches (router.prompt_prefixes).
    parsed: dict[str, Any] | None = None


class Dispatcher:
    """The routing shared by every API surface: one per router."""

    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        scheduler: Scheduler,
        aliases: Aliases,
        ledger: Ledger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._started = clock()
        # A fresh replica has not heard from every agent yet: an unknown model then means
        # "not yet", so it answers 503 (retry, elsewhere) rather than 404.
        self._warmup_s = settings.warmup

        self.settings = settings
        self._registry = registry
        self.scheduler = scheduler
        self.aliases = aliases
        self.clock = clock
        self._ids = random.Random()  # correlation ids: unique, not secret (no syscall each)
        self.ledger = ledger
        self._rosters = Rosters(
            CandidateRules(
                threshold=registry.threshold,
                stale_after_s=3 * settings.report_interval_s,
                cap_factor=settings.cap_factor,
                replicas=settings.router_replicas,
                replica_salt=settings.router_id,
                params=scheduler.params,
            )
        )

    def group_of(self, request: web.Request) -> Group:
        name = request.match_info.get("group", self.settings.default_group)
        group = self._registry.groups.get(name)
        if group is None:
            raise NotFound(f"no server group named '{name}'", code="group_not_found")
        return group

    def names(self, model: str) -> tuple[str, ...]:
        return self.aliases.names(model)

    async def read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if request.content.is_eof():  # all of it came with the headers: nothing to wait for
            return await request.read()
        try:
            async with asyncio.timeout(self.settings.client_body_timeout_s):
                return await request.read()
        except TimeoutError as exc:
            raise RequestTimeout(
                f"request body not received within {self.settings.client_body_timeout_s:g}s"
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
        ledger = self.ledger
        try:
            ledger.started(record, self.clock())
            target = build(await self.read_body(request))
            return await Dispatch(self, request, group, target, record).run()
        except RouterError as err:
            record.status = err.status
            record.error = err.code or err.type
            ledger.metrics.rejections.labels(group.name, record.error).inc()
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            record.status = 499
            record.error = record.error or "client_gone"
            raise
        finally:
            ledger.ended(record, self.clock())

    def unknown_model(self, group: Group, target: Target) -> RouterError:
        """No node of the group serves the model (on a backend that speaks the surface)."""
        if self.clock() - self._started < self._warmup_s:
            return NoCapacity(
                f"this router is starting and has not yet heard of a node serving '{target.model}'",
                retry_after_s=1,
            )
        return ModelNotFound(
            f"model '{target.model}' is not served by group '{group.name}'"
            + (" on a backend that speaks this API" if target.kinds else ""),
            param="model",
        )

    def roster(self, group: Group, target: Target) -> Roster:
        """The nodes of ``group`` serving the target's model (under any of its names) that
        speak its surface, as kept candidates."""
        canonical = self.aliases.canonical(target.model)
        names = self.aliases.names(canonical)
        return self._rosters.get(group, canonical, names, target.kinds, target.agentless_kinds)


class Dispatch:
    """One request from its model to a node: the roster it is chosen from, the queue it waits
    in, and what it has been through (busy answers to slot checks). Each pick reserves a slot
    (a :class:`~router.registry.Reservation`, which owns it until it is released); the
    admission ticket that carries it is released when the request ends."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        request: web.Request,
        group: Group,
        target: Target,
        record: RequestRecord,
    ) -> None:
        self._d = dispatcher
        self._settings = dispatcher.settings
        self._request = request
        self._group = group
        self._target = target
        self._record = record
        self._admission = request.app[ADMISSION]
        self._model = target.model
        # one queue whatever name the request used
        self._canonical = dispatcher.aliases.canonical(target.model)
        self._key = f"{group.name}/{self._canonical}"
        self._session_id = id_header(request.headers, "X-Octopus-Session-Id")
        self._busy = 0  # busy answers to slot checks: the request goes back to its queue's head
        # What the last pick chose: the nodes to try in order, the names they serve the model
        # under (where not the one asked for), the first one's slots for its agent to check.
        self._order: list[str] = []
        self._renamed: Mapping[str, str] = {}
        self._slot_check = 0
        self._kept: Roster | None = None
        # the prompt, where the policy routes on the nodes' prompt caches
        self._prompt = (
            PromptRoute.of(target.parsed, target.node_path, group.policy, len(target.body))
            if group.prefix_routing
            else None
        )

    def _roster(self) -> Roster:
        """The model's roster in the group as it stands (made again after the group changed)."""
        roster = self._kept
        if roster is None or roster.generation != self._group.generation:
            roster = self._kept = self._d.roster(self._group, self._target)
        return roster

    async def run(self) -> web.StreamResponse:
        roster = self._roster()
        record = self._record
        if not roster.nodes:
            record.model = "other"
            raise self._d.unknown_model(self._group, self._target)
        record.model = self._model
        if not roster.can_serve(self._d.clock()):
            raise self._no_node(roster)
        queued_at = time.perf_counter()
        while True:
            ticket = await self._admit()
            record.queue_wait_s = time.perf_counter() - queued_at
            record.admitted = True
            with ticket:
                try:
                    response = await self._request.app[FORWARDER].forward(
                        self._request,
                        self._group,
                        self._order,
                        self._outbound(),
                        record,
                        first=ticket.grant,
                        on_release=self._freed,
                        slot_check=self._slot_check,
                    )
                    if self._prompt is not None:
                        self._prompt.teach(record)
                    return response
                except NodeBusy:
                    self._busy += 1
                except UpstreamError:
                    if not self._wait_after_failures():
                        raise

    async def _admit(self) -> Ticket[Reservation]:
        """A slot, at once or after a fair wait in the model's queue."""
        busy, attempts = self._busy, self._settings.max_attempts
        try:
            return await self._admission.admit(
                self._key,
                self._record.tenant,
                self._pick,
                returning=busy > 0,
                # after max_attempts busy answers in a row, wait for capacity news
                wait_first=busy > 0 and busy % attempts == 0,
            )
        except Rejected as exc:
            error = RateLimited if exc.status == 429 else NoCapacity
            raise error(
                f"no capacity for '{self._model}': {exc.reason}",
                code="queue_full" if exc.status == 429 else "no_capacity",
                retry_after_s=exc.retry_after_s,
            ) from None

    def _wait_after_failures(self) -> bool:
        """Every node tried failed before answering (a dead engine behind its agent) while the
        others were full: wait for their slot rather than fail, within max_attempts. A timeout
        (UpstreamTimeout) is not retried here."""
        record = self._record
        return (
            record.t_upstream_headers is None
            and record.attempts < self._settings.max_attempts
            and self._roster().can_serve(self._d.clock())
        )

    def _freed(self) -> None:
        """A slot of this request's was freed: a waiter for the model may take it."""
        self._admission.wake(self._key)

    def _pick(self) -> Reservation | None:
        """Choose and reserve in one step (no gap for another request to slip into); None when
        every node is full (wait), an error when no node can take the request at all."""
        roster = self._roster()
        settings = self._settings
        prompt = self._prompt
        terms = None if prompt is None else prompt.terms(roster)
        roster.expect(self._d.ledger.answer_lengths.expected(self._canonical))
        rows = roster.decide(
            self._d.scheduler,
            self._group.policy,
            self._key,
            self._d.clock(),
            limit=settings.max_attempts,
            affinity=self._session_id or self._record.tenant,
            waiting=self._admission.waiting(self._key),
            prefill_s=None if terms is None else terms.prefill_s,
            ties=None if terms is None else terms.ties,
        )
        if rows is None:  # no node can take it now, full or not: do not wait for one
            raise self._no_node(roster)
        if not rows:
            return None
        first = rows[0]
        node = roster.nodes[first]
        self._order = [roster.ids[i] for i in rows]
        self._renamed = roster.renamed(self._model)
        self._slot_check = 0
        if settings.router_replicas > 1 and node.has_agent:  # may be another's slot by now
            self._slot_check = roster.slot_check(first, self._d.clock(), self._busy)
        if prompt is not None:
            now, metrics = self._d.clock(), self._d.ledger.metrics
            prompt.routed(roster, first, terms, now, metrics.prompt_chars, self._group.name)
        return Reservation(node, self._model, self._freed)

    def _no_node(self, roster: Roster) -> NoCapacity:
        now = self._d.clock()
        cooling = any(not n.breaker_allows(now) for n in roster.nodes)
        reason = " (nodes are cooling down after errors)" if cooling else ""
        return NoCapacity(
            f"no healthy node serves model '{self._model}' right now{reason}",
            retry_after_s=self._settings.retry_after_s,
        )

    def _outbound(self) -> Outbound:
        """The request as it goes to the nodes the last pick chose."""
        target, record = self._target, self._record
        return Outbound(
            path=target.node_path,
            body=target.body,
            model=self._model,
            correlation_id=record.correlation_id,
            tenant_id=record.tenant,
            session_id=self._session_id,
            node_models=self._renamed,
            model_in_body=target.model_in_body,
            stream=target.stream,
            done_marker=target.done_marker,
        )


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
