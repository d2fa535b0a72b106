"""The live page and the JSON it polls."""

from __future__ import annotations

from typing import Any

import aiohttp

from node_protocol.prompt_prefix import SCHEME
from node_protocol.wire import PrefixSummary
from router.answer_lengths import MIN_ANSWERS, stepped
from router.app import RunningRouter
from tests.fakes import FakeNode, register, report, running


async def _dashboard_after(
    session: aiohttp.ClientSession, router: RunningRouter, body: dict[str, Any], times: int
) -> dict[str, Any]:
    """/api/dashboard after ``body`` was sent as a chat ``times`` times, each answered 200."""
    for _ in range(times):
        url = router.url + "/inference-cluster/v1/chat/completions"
        async with session.post(url, json=body) as resp:
            assert resp.status == 200
            await resp.read()
    async with session.get(router.url + "/api/dashboard") as resp:
        data: dict[str, Any] = await resp.json()
    return data


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

    async def test_data_shows_prompt_cache_shares(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A prompt sent again goes onto the prefix the router counts as cached where it sent
        it first; the engine's own cached share comes from the node's report."""
        async with running(FakeNode("n1")) as node:
            node_id = await register(session, router.url, node)
            body = report(node.models)
            summary = PrefixSummary(node.models[0], SCHEME, frozenset({7}), 1 << 20, 4096, 0.6)
            body["prefixCaches"] = [summary.to_json()]
            put = f"{router.url}/api/server-groups/inference-cluster/nodes/{node_id}/report"
            async with session.put(put, json=body) as resp:
                assert resp.status in (200, 204)
            system = {"role": "system", "content": "Follow the tools' contracts. " * 100}
            turn = {"model": node.models[0], "messages": [system, {"role": "user", "content": "a"}]}
            data = await _dashboard_after(session, router, turn, 2)
        (entry,) = data["groups"][0]["nodes"]
        assert entry["models"][0]["engineCachedRatio"] == 0.6
        # the same prompt twice: the first found nothing cached there, the second all of it
        assert entry["promptCachedShare"] == 0.5

    async def test_data_shows_the_answer_lengths_learned_per_model(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Whole answers relayed teach the router each model's answer length (what its scores
        price a queued request at); the page shows it with the answers counted."""
        async with running(FakeNode("n1", chunks=20)) as node:
            await register(session, router.url, node)
            chat = {"model": node.models[0], "stream": True,
                    "messages": [{"role": "user", "content": "a"}]}  # fmt: skip
            data = await _dashboard_after(session, router, chat, MIN_ANSWERS)
        expected = {"model": node.models[0], "expectedTokens": round(stepped(20), 1),
                    "answers": MIN_ANSWERS}  # fmt: skip
        assert data["answerLengths"] == [expected]
