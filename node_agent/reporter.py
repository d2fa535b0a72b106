"""Registration with every router and the load-report loop.

One collector builds a :class:`LoadReport` about every ``report_interval_s`` (and at once when
the proxy hints that something may have changed and the loaded-model set or the health did).
Each router URL has its own :class:`RouterLink` task that sends the latest report: it
registers first (report included, so the node is routable at once), then PUTs reports; a 404
means the router forgot the node (it restarted), so the link registers again at once. A router
that does not answer is retried with a short backoff, logged once per outage, and never holds
up the other routers. On stop every link deregisters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import aiohttp
import orjson

from router.wire import LoadReport, Registration

from .backends.base import Backend
from .gpu import GpuSource
from .settings import AgentSettings
from .traffic import TokenRate, TrafficStats

log = logging.getLogger("node_agent.reporter")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
HINT_MIN_GAP_S = 0.2  # at most this often does a proxy hint trigger an extra collection
JSON_HEADERS = {"Content-Type": "application/json"}


class LinkError(Exception):
    """A router call that did not succeed (unreachable, timed out, or refused)."""


def _loaded_ids(report: LoadReport) -> frozenset[str]:
    return frozenset(m.id for m in report.models if m.loaded)


def changed(old: LoadReport | None, new: LoadReport) -> bool:
    """Worth sending at once: the loaded-model set or the backend's health moved."""
    return (
        old is None
        or old.backend_health != new.backend_health
        or _loaded_ids(old) != _loaded_ids(new)
    )


class RouterLink:
    """The agent's registration with one router and the reports sent to it."""

    def __init__(
        self,
        router_url: str,
        group: str,
        session: aiohttp.ClientSession,
        registration: Callable[[], dict[str, Any]],
        timeout_s: float,
    ) -> None:
        self.router_url = router_url
        self.node_id: str | None = None
        self.failures = 0  # failed calls since start (observability and tests)
        self._nodes_url = f"{router_url}/api/server-groups/{group}/nodes"
        self._session = session
        self._registration = registration
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._report: LoadReport | None = None
        self._fresh = asyncio.Event()
        self._sending: asyncio.Task[None] | None = None

    def offer(self, report: LoadReport) -> None:
        """Hand over the latest report; older unsent ones are dropped."""
        self._report = report
        self._fresh.set()

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        down_since: float | None = None
        while True:
            await self._fresh.wait()
            self._fresh.clear()
            report = self._report
            if report is None:
                continue
            # Shielded: a shutdown that cancels this loop mid-registration must not lose the
            # node id, or the router would keep a node nobody deregisters.
            self._sending = asyncio.create_task(self.send(report))
            try:
                await asyncio.shield(self._sending)
            except LinkError as exc:
                self.failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("router %s: %s; retrying in the background", self.router_url, exc)
                else:
                    log.debug("router %s still failing: %s", self.router_url, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._fresh.set()  # retry with whatever report is latest by then
                continue
            if down_since is not None:
                log.info(
                    "router %s reachable again after %.1fs",
                    self.router_url,
                    time.monotonic() - down_since,
                )
                down_since = None
            backoff = BACKOFF_MIN_S

    async def send(self, report: LoadReport) -> None:
        """Register if needed, else PUT the report; re-register when the router says 404."""
        if self.node_id is None:
            await self.register(report)
            return
        status = await self._call(
            "PUT", f"{self._nodes_url}/{self.node_id}/report", report.to_json()
        )
        if status == 404:
            log.info("router %s forgot node %s; registering again", self.router_url, self.node_id)
            self.node_id = None
            await self.register(report)
        elif status // 100 != 2:
            raise LinkError(f"report answered {status}")

    async def register(self, report: LoadReport) -> None:
        body = self._registration()
        body["report"] = report.to_json()
        try:
            async with self._session.post(
                self._nodes_url,
                data=orjson.dumps(body),
                headers=JSON_HEADERS,
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status not in (200, 201):
                    detail = raw[:200].decode(errors="replace")
                    raise LinkError(f"registration answered {resp.status}: {detail}")
                answer = orjson.loads(raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LinkError(f"registration failed: {exc!r}") from exc
        except orjson.JSONDecodeError as exc:
            raise LinkError("registration answer is not JSON") from exc
        node_id = answer.get("nodeId") if isinstance(answer, dict) else None
        if not isinstance(node_id, str) or not node_id:
            raise LinkError("registration answer has no nodeId")
        self.node_id = node_id
        log.info("registered with %s as node %s", self.router_url, node_id)

    async def deregister(self) -> None:
        """DELETE the node; failures are logged, never raised (we are shutting down)."""
        sending = self._sending
        if sending is not None and not sending.done():
            await asyncio.wait({sending}, timeout=self._timeout.total)
            sending.cancel()
        if sending is not None and sending.done() and not sending.cancelled():
            sending.exception()  # retrieved: it was logged by run() or is moot now
        node_id, self.node_id = self.node_id, None
        if node_id is None:
            return
        try:
            status = await self._call("DELETE", f"{self._nodes_url}/{node_id}", None)
        except LinkError as exc:
            log.warning("could not deregister from %s: %s", self.router_url, exc)
            return
        log.info("deregistered node %s from %s (%s)", node_id, self.router_url, status)

    async def _call(self, method: str, url: str, body: dict[str, Any] | None) -> int:
        data = None if body is None else orjson.dumps(body)
        try:
            async with self._session.request(
                method, url, data=data, headers=JSON_HEADERS, timeout=self._timeout
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LinkError(f"{method} failed: {exc!r}") from exc


class Reporter:
    """Builds the node's load reports and keeps every router informed."""

    def __init__(
        self,
        settings: AgentSettings,
        session: aiohttp.ClientSession,
        backend: Backend,
        gpus: GpuSource,
        stats: TrafficStats,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._gpus = gpus
        self._stats = stats
        self._rate = TokenRate(window_s=max(10.0, 5 * settings.report_interval_s))
        self._rate.sample(time.monotonic(), stats.output_tokens)  # the baseline
        self._seq = 0
        self.latest: LoadReport | None = None
        self.advertise_url: str | None = None
        self._advertised = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.links = [
            RouterLink(url, settings.group, session, self._registration, settings.control_timeout_s)
            for url in settings.router_urls
        ]

    def advertise(self, url: str) -> None:
        """The URL routers should send requests to; links start registering once it is set."""
        self.advertise_url = url.rstrip("/")
        self._advertised.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-agent-reporter")

    async def stop(self) -> None:
        """Stop the loops, then deregister from every router (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(link.deregister() for link in self.links))

    async def current(self) -> LoadReport:
        """The latest report, building one if none was made yet."""
        if self.latest is None:
            self._publish(await self.build())
        assert self.latest is not None
        return self.latest

    async def build(self) -> LoadReport:
        """A fresh report (seq 0 until published)."""
        stats = self._stats
        tokens_per_s = self._rate.sample(time.monotonic(), stats.output_tokens)
        health, facts, gpus = await asyncio.gather(
            self._backend.health(), self._backend.collect(), self._gpus.read()
        )
        return LoadReport(
            seq=0,
            sent_at=time.time(),
            backend_kind=self._backend.kind,
            backend_version=facts.version,
            backend_health=health,
            in_flight=stats.in_flight,
            queue_waiting=facts.queue_waiting,
            queue_running=facts.queue_running,
            kv_cache_usage=facts.kv_cache_usage,
            output_tokens_per_s=tokens_per_s,
            gpus=gpus,
            models=facts.models,
        )

    def _publish(self, report: LoadReport) -> LoadReport:
        self._seq += 1
        report = dataclasses.replace(
            report, seq=self._seq, sent_at=time.time(), in_flight=self._stats.in_flight
        )
        self.latest = report
        for link in self.links:
            link.offer(report)
        return report

    def _registration(self) -> dict[str, Any]:
        url = self.advertise_url
        assert url is not None, "links start only once the URL is advertised"
        s = self._settings
        return Registration(
            name=s.name,
            base_url=url,
            health_url=f"{url}/health",
            weight=s.weight,
            metadata=dict(s.metadata),
        ).to_json()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._collect_loop())
            if self.links:
                await self._advertised.wait()
                for link in self.links:
                    tasks.create_task(link.run())

    async def _collect_loop(self) -> None:
        interval = self._settings.report_interval_s
        hint = self._stats.changed
        next_due = time.monotonic()
        while True:
            hinted = False
            delay = next_due - time.monotonic()
            if delay > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await hint.wait()
                        hinted = True
            hint.clear()
            if hinted and not (self._stats.take_failure() or self._backend.loads_on_demand):
                # A finished request cannot have changed what this backend holds (vLLM):
                # leave it to the next tick rather than scrape the backend per request.
                await asyncio.sleep(min(HINT_MIN_GAP_S, interval))
                continue
            try:
                report = await self.build()
            except Exception:  # a bug must not silence the node: log it, try next tick
                log.exception("building the load report failed")
                next_due = time.monotonic() + interval
                continue
            if not hinted or changed(self.latest, report):
                self._publish(report)
                next_due = time.monotonic() + interval
            if hinted:
                await asyncio.sleep(min(HINT_MIN_GAP_S, interval))
