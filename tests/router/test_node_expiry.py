"""Registered nodes that fall silent are removed after ``node_expiry_s``, with their metric
series and the groups their registrations made; nodes and groups declared in config stay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import RunningRouter, serve
from router.settings import GroupSettings, SettingsError, StaticNode, load_settings
from tests.conftest import router_settings
from tests.fakes import FakeNode, in_background, register, running, send_report

DEFAULT = "inference-cluster"
BODY = {"model": "m-small", "messages": [{"role": "user", "content": "x"}]}


async def _label_sets(session: aiohttp.ClientSession, url: str) -> list[dict[str, str]]:
    """The label set of every sample on /metrics."""
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples]


async def _waiting(session: aiohttp.ClientSession, url: str) -> float:
    """Requests waiting in the router's admission queues, from /metrics."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "router_admission_queue_waiting"
    )


async def _groups(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(url + "/api/server-groups") as resp:
        return {g["name"]: g["nodes"] for g in (await resp.json())["groups"]}


async def _chat(session: aiohttp.ClientSession, url: str, group: str) -> int:
    async with session.post(f"{url}/{group}/v1/chat/completions", json=BODY) as resp:
        await resp.read()
        return resp.status


@contextlib.asynccontextmanager
async def _keep_reporting(
    session: aiohttp.ClientSession, url: str, node_id: str, node: FakeNode
) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            assert await send_report(session, url, node_id, node) == 200
            await asyncio.sleep(0.1)

    async with in_background(loop):
        yield


async def _wait_for_groups(
    session: aiohttp.ClientSession, router: RunningRouter, expected: dict[str, int]
) -> None:
    """Poll the group listing (the monitor removes nodes on its own clock) until it matches."""
    await _until(lambda: _groups(session, router.url), expected)


async def _until(read: Callable[[], Awaitable[object]], expected: object) -> None:
    """Poll ``read`` until it gives ``expected`` (what it reads changes on the router's own
    clock, with no event to wait on), for at most 5 s."""
    async with asyncio.timeout(5.0):
        while True:
            if await read() == expected:
                return
            await asyncio.sleep(0.02)


def _mentions(labels: dict[str, str], *, group: str | None = None, node: str | None = None) -> bool:
    return (group is None or labels.get("group") == group) and (
        node is None or labels.get("node") == node
    )


async def test_silent_node_is_removed_with_its_series_and_the_group_it_made(
    session: aiohttp.ClientSession,
) -> None:
    """Nodes that stop reporting go after node_expiry_s: from their groups, from /metrics (request,
    retry, rejection and fleet series alike) and, for groups registrations made, the group too.
    A node that keeps reporting, a declared group and a static node stay."""
    declared = GroupSettings(
        name="declared", nodes=(StaticNode(name="static-1", base_url="http://127.0.0.1:9"),)
    )
    settings = router_settings(report_interval_s=0.1, node_expiry_s=1.5, groups=(declared,))
    async with (
        serve(settings) as router,
        running(FakeNode("steady")) as steady,
        running(FakeNode("fading")) as fading,
        running(FakeNode("broken", mode="error_500")) as broken,
        running(FakeNode("quiet")) as quiet,
    ):
        steady_id = await register(session, router.url, steady)
        async with _keep_reporting(session, router.url, steady_id, steady):
            await register(session, router.url, quiet)
            await register(session, router.url, fading, group="ephemeral")
            await register(session, router.url, broken, group="flaky")
            assert await _chat(session, router.url, "ephemeral") == 200
            assert await _chat(session, router.url, "flaky") == 502
            assert await _chat(session, router.url, DEFAULT) == 200
            before = await _label_sets(session, router.url)
            assert any(_mentions(ls, group="ephemeral", node="fading") for ls in before)
            assert any(_mentions(ls, group="flaky", node="broken") for ls in before)
            assert any(_mentions(ls, node="quiet") for ls in before)

            await _wait_for_groups(session, router, {DEFAULT: 1, "declared": 1})
            after = await _label_sets(session, router.url)
    gone = [ls for ls in after if ls.get("group") in ("ephemeral", "flaky")]
    assert gone == []
    assert not [ls for ls in after if ls.get("node") in ("fading", "broken", "quiet")]
    assert any(_mentions(ls, group=DEFAULT, node="steady") for ls in after)
    assert any(_mentions(ls, group="declared", node="static-1") for ls in after)


async def test_deregistered_node_leaves_no_series_and_no_group(
    session: aiohttp.ClientSession,
) -> None:
    """Deregistering the last node of a group a registration made removes the group and every
    series labelled with the node or the group."""
    async with serve(router_settings()) as router, running(FakeNode("brief")) as node:
        node_id = await register(session, router.url, node, group="passing")
        assert await _chat(session, router.url, "passing") == 200
        assert any(_mentions(ls, node="brief") for ls in await _label_sets(session, router.url))
        url = f"{router.url}/api/server-groups/passing/nodes/{node_id}"
        async with session.delete(url) as resp:
            assert resp.status == 200
        assert await _groups(session, router.url) == {DEFAULT: 0}
        after = await _label_sets(session, router.url)
    assert not [ls for ls in after if "passing" in ls.values() or "brief" in ls.values()]


async def test_reporting_node_outlives_the_expiry_and_a_silent_one_comes_back_by_registering(
    session: aiohttp.ClientSession,
) -> None:
    """A node reporting all along is still there well past node_expiry_s; one that expired is
    answered 404 on its next report and may register again."""
    # The expiry is 15 report intervals: on a busy machine the whole process can stall for most
    # of a second, and the steady node must not expire for that.
    settings = router_settings(report_interval_s=0.1, node_expiry_s=1.5)
    async with (
        serve(settings) as router,
        running(FakeNode("steady")) as steady,
        running(FakeNode("napper")) as napper,
    ):
        steady_id = await register(session, router.url, steady)
        napper_id = await register(session, router.url, napper)
        async with _keep_reporting(session, router.url, steady_id, steady):
            await _wait_for_groups(session, router, {DEFAULT: 1})
            await asyncio.sleep(1.6)  # past another expiry period: the reporting node stays
            assert await _groups(session, router.url) == {DEFAULT: 1}
            assert await send_report(session, router.url, napper_id, napper) == 404
            assert await register(session, router.url, napper) == napper_id
            assert await _groups(session, router.url) == {DEFAULT: 2}


async def test_request_waiting_for_a_node_that_goes_away_gets_503(
    session: aiohttp.ClientSession,
) -> None:
    """A request queued behind the one slot of a node that is then removed is answered 503 (no
    node serves the model now), not an internal error."""
    settings = router_settings(cap_factor=1.0)
    async with (
        serve(settings) as router,
        running(FakeNode("single", chunks=10, chunk_delay_s=0.1)) as node,
    ):
        node_id = await register(session, router.url, node, slots=1)
        url = f"{router.url}/{DEFAULT}/v1/chat/completions"
        first = asyncio.create_task(session.post(url, json={**BODY, "stream": True}))
        await node.wait_for(lambda n: n.active == 1)
        second = asyncio.create_task(_chat(session, router.url, DEFAULT))
        await _until(lambda: _waiting(session, router.url), 1)
        async with session.delete(f"{router.url}/api/server-groups/{DEFAULT}/nodes/{node_id}"):
            pass
        assert await second == 503
        async with await first as resp:
            await resp.read()


def test_node_expiry_is_a_setting_longer_than_the_report_interval() -> None:
    """node_expiry_s defaults to 10 minutes, comes from ROUTER_NODE_EXPIRY_S, and must be longer
    than report_interval_s (or nodes would be removed between two reports)."""
    assert load_settings([], {}).node_expiry_s == 600.0
    assert load_settings([], {"ROUTER_NODE_EXPIRY_S": "90"}).node_expiry_s == 90.0
    with pytest.raises(SettingsError, match="node_expiry_s"):
        load_settings([], {"ROUTER_REPORT_INTERVAL_S": "1", "ROUTER_NODE_EXPIRY_S": "1"})
