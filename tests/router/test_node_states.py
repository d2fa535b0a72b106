"""Node states over time: missed reports, recovery, drain, deregistration, agentless nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from router.app import RunningRouter, serve
from router.settings import GroupSettings, StaticNode
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running, send_report

NODES = "/api/server-groups/inference-cluster/nodes"
CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "messages": [{"role": "user", "content": "hi"}]}


async def _states(session: aiohttp.ClientSession, router_url: str) -> dict[str, str]:
    async with session.get(router_url + NODES) as resp:
        return {n["name"]: n["status"] for n in (await resp.json())["nodes"]}


async def _until_state(
    session: aiohttp.ClientSession, router_url: str, name: str, state: str
) -> None:
    async with asyncio.timeout(5):
        while (await _states(session, router_url)).get(name) != state:  # noqa: ASYNC110 - polls a remote view
            await asyncio.sleep(0.05)


async def _status(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with session.post(url, json=body) as resp:
        await resp.read()
        return resp.status


class TestReports:
    """Reports are the heartbeat: silence makes a node degraded, then unhealthy."""

    async def test_silent_node_goes_unhealthy_and_comes_back(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """With no reports a node passes through degraded to unhealthy (no routing); a new
        report re-admits it."""
        async with running(FakeNode("n")) as node:
            node_id = await register(session, router.url, node)
            assert (await _states(session, router.url))["n"] == "healthy"
            await _until_state(session, router.url, "n", "degraded")
            await _until_state(session, router.url, "n", "unhealthy")
            assert await _status(session, router.url + CHAT, BODY) == 503
            assert await send_report(session, router.url, node_id, node, seq=2) == 200
            assert (await _states(session, router.url))["n"] == "healthy"
            assert await _status(session, router.url + CHAT, BODY) == 200

    async def test_backend_down_report_removes_node_at_once(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """An agent reporting its backend unreachable takes the node out immediately."""
        async with running(FakeNode("n")) as node:
            node_id = await register(session, router.url, node)
            await send_report(session, router.url, node_id, node, seq=2, health="unhealthy")
            assert (await _states(session, router.url))["n"] == "unhealthy"

    async def test_registration_is_idempotent_by_name(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Registering the same name twice keeps one node with the same stable id."""
        async with running(FakeNode("n")) as node:
            first = await register(session, router.url, node)
            second = await register(session, router.url, node)
        assert first == second
        assert list(await _states(session, router.url)) == ["n"]


class TestOperatorActions:
    """Drain stops new requests; deregistration forgets the node."""

    async def test_drain_and_resume(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A drained node gets no new requests until resumed."""
        async with running(FakeNode("a")) as a, running(FakeNode("b")) as b:
            a_id = await register(session, router.url, a)
            await register(session, router.url, b)
            async with session.post(f"{router.url}{NODES}/{a_id}/drain") as resp:
                assert (await resp.json())["status"] == "draining"
            for _ in range(6):
                assert await _status(session, router.url + CHAT, BODY) == 200
            assert len(a.seen) == 0
            async with session.post(f"{router.url}{NODES}/{a_id}/resume") as resp:
                assert (await resp.json())["status"] == "healthy"

    async def test_deregister(self, router: RunningRouter, session: aiohttp.ClientSession) -> None:
        """After DELETE the node is gone and its model no longer known."""
        async with running(FakeNode("a")) as a:
            a_id = await register(session, router.url, a)
            async with session.delete(f"{router.url}{NODES}/{a_id}") as resp:
                assert resp.status == 200
            assert await _states(session, router.url) == {}
            assert await _status(session, router.url + CHAT, BODY) == 404


class TestStaticNodes:
    """A node declared in config with no agent is health-polled and routed to."""

    async def test_static_node_is_polled_and_served(self, session: aiohttp.ClientSession) -> None:
        """The router learns a static node's models from /v1/models and routes to it."""
        async with running(FakeNode("static-1", models=("m-static",))) as node:
            group = GroupSettings(
                name="inference-cluster", nodes=(StaticNode(name="static-1", base_url=node.url),)
            )
            async with serve(router_settings(groups=(group,))) as router:
                await _until_state(session, router.url, "static-1", "healthy")
                body = {"model": "m-static", "messages": [{"role": "user", "content": "x"}]}
                async with session.post(
                    router.url + CHAT, json=body, headers={"X-Octopus-Tenant-Id": "t1"}
                ) as resp:
                    assert resp.status == 200
        assert node.seen[0]["headers"]["X-Tenant-Id"] == "t1"
