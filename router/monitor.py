"""Node health over time: missed agent reports, and polls of nodes that have no agent.

Every ``report_interval_s`` each agent node whose last report is older than two intervals gets
one failed check, so a silent agent goes degraded, then unhealthy after ``failure_threshold``
intervals. Nodes with no agent (static in config, or registered by hand without a report) are
polled every ``health_interval_s``: ``healthUrl`` (2xx passes) and ``/v1/models`` (the models
they serve, all taken as loaded), turned into a synthetic load report so the rest of the router
treats every node alike. A registered node not heard from (a report, a poll it answered or a
registration) for ``node_expiry_s`` is removed; nodes declared in config stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson

from node_protocol.wire import LoadReport, ModelReport
from router.registry import Node, Registry
from router.settings import RouterSettings

log = logging.getLogger("router.monitor")


def model_cards(raw: bytes) -> tuple[ModelReport, ...]:
    """The models of an OpenAI ``/v1/models`` answer (all taken as loaded; ``"data": null`` is
    none, as servers written in Go send an empty list); ValueError when it is not such an
    answer (a node's garbage is its failed check, never the monitor's failure)."""
    answer = orjson.loads(raw)
    if not isinstance(answer, dict):
        raise ValueError("/v1/models answered something other than a JSON object")
    cards = answer.get("data") or []
    if not isinstance(cards, list):
        raise ValueError("/v1/models answered a 'data' that is not a list")
    return tuple(
        ModelReport(id=str(c["id"]), loaded=True)
        for c in cards
        if isinstance(c, dict) and "id" in c
    )


class Monitor:
    def __init__(
        self,
        registry: Registry,
        session: aiohttp.ClientSession,
        settings: RouterSettings,
        clock: Callable[[], float] = time.monotonic,
        on_checked: Callable[[], None] | None = None,
    ) -> None:
        self._on_checked = on_checked  # after each round of checks (node states may have moved)
        self._registry = registry
        self._session = session
        self._settings = settings
        self._clock = clock
        self._last_poll = -1e18
        self._timeout = aiohttp.ClientTimeout(total=min(5.0, settings.health_interval_s))
        self._seq = 0

    def check_reports(self, now: float) -> None:
        """Count a failed check on every agent node whose reports stopped."""
        stale_after = 2 * self._settings.report_interval_s
        for group in self._registry.groups.values():
            for node in group.nodes.values():
                if node.static or not node.has_agent or node.report_received_at is None:
                    continue
                if now - node.report_received_at > stale_after:
                    node.check_failed(self._registry.threshold)

    def expire_nodes(self, now: float) -> None:
        """Remove registered nodes (and the groups they made) silent for ``node_expiry_s``."""
        expiry_s = self._settings.node_expiry_s
        for node in self._registry.expire(now, expiry_s):
            log.info(
                "node %s removed from group %s: not heard from for %gs",
                node.name,
                node.group,
                expiry_s,
            )

    def _polled_nodes(self) -> list[Node]:
        return [
            node
            for group in self._registry.groups.values()
            for node in group.nodes.values()
            if node.static or not node.has_agent
        ]

    async def poll(self, node: Node) -> None:
        """One health check of an agentless node."""
        health_url = node.registration.health_url or f"{node.base_url}/health"
        try:
            async with self._session.get(health_url, timeout=self._timeout) as resp:
                healthy = 200 <= resp.status < 300
                await resp.read()
            models: tuple[ModelReport, ...] = node.models()
            async with self._session.get(
                f"{node.base_url}/v1/models", timeout=self._timeout
            ) as resp:
                if resp.status == 200:
                    models = model_cards(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.info("health poll of %s failed: %r", node.name, exc)
            node.check_failed(self._registry.threshold)
            return
        self._seq += 1
        report = LoadReport(
            seq=self._seq,
            sent_at=time.time(),
            backend_kind="openai",
            backend_health="ok" if healthy else "degraded",
            in_flight=node.in_flight,
            models=models,
            draining=node.draining,
        )
        self._registry.apply_report(node, report, self._clock(), from_agent=False)

    async def run(self) -> None:
        interval = self._settings.report_interval_s
        while True:
            now = self._clock()
            self.check_reports(now)
            self.expire_nodes(now)
            if now - self._last_poll >= self._settings.health_interval_s:
                self._last_poll = now
                nodes = self._polled_nodes()
                if nodes:
                    await asyncio.gather(*(self.poll(n) for n in nodes))
            if self._on_checked is not None:
                self._on_checked()
            await asyncio.sleep(interval)
