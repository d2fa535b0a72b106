"""One router's view of this node: registration, reports and deregistration.

A :class:`RouterLink` sends the latest report it was offered: it registers first (report
included, so the node is routable at once), then PUTs reports; a 404 means the router forgot
the node (it restarted), so the link registers again at once. A router that does not answer is
retried with a short backoff, logged once per outage, and never holds up the other routers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from node_protocol.wire import REJOIN_S, LoadReport

log = logging.getLogger("node_agent.router_link")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = REJOIN_S  # a router that comes back is re-joined within about this long
JSON_HEADERS = {"Content-Type": "application/json"}


class LinkError(Exception):
    """A router call that did not succeed (unreachable, timed out, or refused)."""


class RouterLink:
    """The agent's registration with one router and the reports sent to it."""

    def __init__(
        self,
        router_url: str,
        group: str,
        session: aiohttp.ClientSession,
        registration: Callable[[], dict[str, Any]],
        timeout_s: float,
        token: str | None = None,
        on_drain: Callable[[bool], None] | None = None,
    ) -> None:
        self._on_drain = on_drain
        self.router_url = router_url
        self.node_id: str | None = None
        self.failures = 0  # failed calls since start (observability and tests)
        self._nodes_url = f"{router_url}/api/server-groups/{group}/nodes"
        self._session = session
        self._registration = registration
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = dict(JSON_HEADERS)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
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
        status, raw = await self._call(
            "PUT", f"{self._nodes_url}/{self.node_id}/report", report.to_json()
        )
        if status // 100 == 2:
            self._heard(raw, sent=report.draining)
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
                headers=self._headers,
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
        self._heard(answer, sent=report.draining)
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
            status, _ = await self._call("DELETE", f"{self._nodes_url}/{node_id}", None)
        except LinkError as exc:
            log.warning("could not deregister from %s: %s", self.router_url, exc)
            return
        log.info("deregistered node %s from %s (%s)", node_id, self.router_url, status)

    def _heard(self, raw: bytes | dict[str, Any], sent: bool) -> None:
        """A router's answer may tell the node to drain or resume (an operator's action at that
        replica); the agent then says so in its reports to every replica. An answer that only
        echoes what this report said carries no news (and may be stale), so it is ignored."""
        try:
            answer = orjson.loads(raw) if isinstance(raw, bytes) else raw
        except orjson.JSONDecodeError:
            return
        drain = answer.get("drain") if isinstance(answer, dict) else None
        if isinstance(drain, bool) and drain != sent and self._on_drain is not None:
            self._on_drain(drain)

    async def _call(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        data = None if body is None else orjson.dumps(body)
        try:
            async with self._session.request(
                method, url, data=data, headers=self._headers, timeout=self._timeout
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LinkError(f"{method} failed: {exc!r}") from exc
