"""Registration with every router and the load-report loop.

One collector builds a :class:`LoadReport` about every ``report_interval_s`` (and at once when
the proxy hints that something may have changed and the loaded-model set or the health did).
Each router URL has its own :class:`~node_agent.router_link.RouterLink` task that sends the
latest report (registering first, again when the router forgot the node). GPUs come from the
GPU source (NVML) and, when it has none, from the backend itself (Triton's DCGM gauges). On stop
every link deregisters. Each report carries the summary of the node's prompt caches
(:mod:`node_agent.prompt_caches`), sized from the facts of the same collection. Every loop (the
collector, each link, the DNS follower) runs supervised on its own
(:class:`~node_protocol.supervision.Supervised`): one that fails is logged and restarted, and
the others go on. What a report says of the backend and the GPUs is read in the background
(:mod:`node_agent.node_probe`): a backend that stops answering delays no report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import aiohttp
from prometheus_client import Counter

from node_protocol.supervision import Supervised
from node_protocol.wire import LoadReport, PrefixSummary, Registration

from .backends.base import Backend
from .gate import BackendGate
from .gpu import GpuSource
from .node_probe import NodeProbe
from .prompt_caches import PromptCaches
from .router_directory import Resolver, RouterDirectory, dns_resolver
from .router_link import RouterLink
from .settings import AgentSettings
from .traffic import TokenRate, TrafficStats

log = logging.getLogger("node_agent.reporter")

HINT_MIN_GAP_S = 0.2  # at most this often does a proxy hint trigger an extra collection


def _loaded_ids(report: LoadReport) -> frozenset[str]:
    return frozenset(m.id for m in report.models if m.loaded)


def changed(old: LoadReport | None, new: LoadReport) -> bool:
    """Worth sending at once: the loaded-model set or the backend's health moved."""
    return (
        old is None
        or old.backend_health != new.backend_health
        or _loaded_ids(old) != _loaded_ids(new)
    )


class Reporter:
    """Builds the node's load reports and keeps every router informed."""

    def __init__(
        self,
        settings: AgentSettings,
        session: aiohttp.ClientSession,
        backend: Backend,
        gpus: GpuSource,
        stats: TrafficStats,
        resolver: Resolver = dns_resolver,
        prompts: PromptCaches | None = None,
        restarts: Counter | None = None,
        gate: BackendGate | None = None,
    ) -> None:
        self._settings = settings
        self._prompts = prompts
        self._restarts = restarts
        self._backend = backend
        self._probe = NodeProbe(
            backend, gpus, gate or BackendGate(lambda: None), settings.report_interval_s
        )
        self._stats = stats
        window_s = max(10.0, 5 * settings.report_interval_s)
        self._rate = TokenRate(window_s)
        # the mean in flight over the same window: the token rate per stream is the one over
        # the other, whatever the count is at the moment of the report
        self._busy = TokenRate(window_s)
        now = time.monotonic()
        self._rate.sample(now, stats.output_tokens)  # the baselines
        self._busy.sample(now, stats.busy_seconds(now))
        self._seq = 0
        self.latest: LoadReport | None = None
        self.advertise_url: str | None = None
        self._advertised = asyncio.Event()
        self._started = self._stopped = False
        self._session = session
        self.draining = False
        self._links: dict[str, RouterLink] = {}
        self._link_tasks: dict[str, Supervised] = {}
        for url in settings.router_urls:
            self._add_link(url)
        self._collector = self._supervised("report-collector", self._collect_loop)
        self._follower: Supervised | None = None
        if settings.router_dns:
            directory = RouterDirectory(settings.router_dns, resolver)
            self._follower = self._supervised(
                "router-directory", lambda: self._follow_directory(directory)
            )

    @property
    def links(self) -> list[RouterLink]:
        return list(self._links.values())

    @property
    def tasks(self) -> list[Supervised]:
        """The reporter's long-lived loops, for ``/ready``."""
        follower = [] if self._follower is None else [self._follower]
        return [self._collector, *follower, *self._link_tasks.values()]

    def _supervised(
        self, name: str, run: Callable[[], Awaitable[None]], label: str | None = None
    ) -> Supervised:
        return Supervised(name, run, restarts=self._restarts, label=label)

    def _add_link(self, url: str) -> RouterLink:
        s = self._settings
        link = RouterLink(
            url,
            s.group,
            self._session,
            self._registration,
            s.control_timeout_s,
            token=s.router_token,
            on_drain=self._told_to_drain,
        )
        self._links[url] = link
        if self.latest is not None:
            link.offer(self.latest)
        self._link_tasks[url] = self._supervised(
            f"router-link {url}", lambda: self._run_link(link), label="router-link"
        )
        return link

    async def _run_link(self, link: RouterLink) -> None:
        await self._advertised.wait()  # registration needs the URL routers are to use
        await link.run()

    def _told_to_drain(self, draining: bool) -> None:
        """A router replica said drain (or resume): tell every replica in the next report."""
        if draining != self.draining:
            log.info("node %s by an operator's request", "draining" if draining else "resumed")
            self.draining = draining
            if self.latest is not None:
                self._publish(self.latest)

    def advertise(self, url: str) -> None:
        """The URL routers should send requests to; links start registering once it is set."""
        self.advertise_url = url.rstrip("/")
        self._advertised.set()

    def start(self) -> None:
        if not self._started:
            self._started = True
            for task in self.tasks:
                task.start()

    async def stop(self) -> None:
        """Stop the loops, then deregister from every router (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self._follower is not None:  # first: it starts links
            await self._follower.stop()
        await asyncio.gather(*(task.stop() for task in self.tasks))
        await self._probe.stop()
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
        now = time.monotonic()
        tokens_per_s = self._rate.sample(now, stats.output_tokens)
        mean_in_flight = self._busy.sample(now, stats.busy_seconds(now))
        reading = await self._probe.read()
        health, facts, gpus = reading.health, reading.facts, reading.gpus
        if not gpus:
            gpus = facts.gpus  # no NVML here: the backend's own GPU readings, if it has any
        prefix_caches: tuple[PrefixSummary, ...] = ()
        if self._prompts is not None:
            self._prompts.configure(facts.models, facts.kv_capacity_tokens)
            prefix_caches = self._prompts.summaries()
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
            prompt_tokens=facts.prompt_tokens,
            cached_prompt_tokens=facts.cached_prompt_tokens,
            output_tokens_per_s=tokens_per_s,
            mean_in_flight=mean_in_flight,
            gpus=gpus,
            models=facts.models,
            prefix_caches=prefix_caches,
        )

    def _publish(self, report: LoadReport) -> LoadReport:
        self._seq += 1
        report = dataclasses.replace(
            report,
            seq=self._seq,
            sent_at=time.time(),
            in_flight=self._stats.in_flight,
            draining=self.draining,
        )
        self.latest = report
        # the names requests are counted under, and whether per model
        self._stats.know_models(report.models, slots_per_model=self._backend.slots_per_model)
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

    async def _follow_directory(self, directory: RouterDirectory) -> None:
        """Keep one link per router replica the DNS name resolves to."""
        static = set(self._settings.router_urls)
        await self._advertised.wait()
        while True:
            urls = await directory.urls()
            if urls is not None:
                for url in urls - set(self._links):
                    log.info("router replica %s found", url)
                    self._add_link(url)
                    self._link_tasks[url].start()
                for url in set(self._links) - urls - static:
                    log.info("router replica %s is gone", url)
                    self._links.pop(url)
                    await self._link_tasks.pop(url).stop()
            await asyncio.sleep(self._settings.router_dns_interval_s)

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
