"""The live page and the JSON it polls."""

from __future__ import annotations

import aiohttp

from router.app import RunningRouter
from tests.fakes import FakeNode, register, running


class TestDashboard:
    """/dashboard serves a self-contained page; /api/dashboard has nodes, GPUs and errors."""

    async def test_page_is_self_contained(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The page loads nothing from other hosts (it must work offline)."""
        async with session.get(router.url + "/dashboard") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            html = await resp.text()
        assert "/api/dashboard" in html
        assert "http://" not in html
        assert "https://" not in html

    async def test_data_lists_nodes_and_errors(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A registered node appears with its state; a failed request shows in recent errors."""
        async with running(FakeNode("n1")) as node:
            await register(session, router.url, node)
            bad = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(
                router.url + "/inference-cluster/v1/chat/completions", json=bad
            ) as resp:
                assert resp.status == 404
            async with session.get(router.url + "/api/dashboard") as resp:
                data = await resp.json()
        (group,) = data["groups"]
        assert [(n["name"], n["state"]) for n in group["nodes"]] == [("n1", "healthy")]
        assert data["recentErrors"][0]["status"] == 404
