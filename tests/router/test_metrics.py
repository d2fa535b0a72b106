"""The router's /metrics: request, token, latency and fleet metrics, parsed by the library."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from node_protocol.prompt_prefix import SCHEME
from node_protocol.wire import PrefixSummary
from router.app import RunningRouter, serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, report, running

CHAT = "/inference-cluster/v1/chat/completions"


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def _samples(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


class TestRequestMetrics:
    """Each answered request shows in the counters and histograms with bounded labels."""

    async def test_requests_tokens_and_ttft(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Three streamed requests count as 200s on the node, with tokens and TTFT observed;
        an unknown model counts as a rejection labelled 'other'."""
        async with running(FakeNode("n1", chunks=5)) as node:
            await register(session, router.url, node)
            body = {
                "model": "m-small",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            }
            for _ in range(3):
                async with session.post(
                    router.url + CHAT, json=body, headers={"X-Octopus-Tenant-Id": "acme"}
                ) as resp:
                    assert float(resp.headers["X-Router-Overhead-Ms"]) >= 0
                    await resp.read()
            bad = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(router.url + CHAT, json=bad) as resp:
                assert resp.status == 404
            samples = await _samples(session, router.url)
        ok = {"group": "inference-cluster", "model": "m-small", "node": "n1", "status": "200"}
        assert (ok, 3.0) in samples["router_requests_total"]
        assert ({"group": "inference-cluster", "model": "m-small", "node": "n1"}, 15.0) in samples[
            "router_output_tokens_total"
        ]
        ttft_count = [v for labels, v in samples["router_ttft_seconds_count"]]
        assert ttft_count == [3.0]
        assert ({"tenant": "acme"}, 3.0) in samples["router_tenant_requests_total"]
        assert (
            {"group": "inference-cluster", "model": "other", "node": "none", "status": "404"},
            1.0,
        ) in samples["router_requests_total"]


class TestFleetMetrics:
    """Node state and load gauges come from the registry at scrape time."""

    async def test_node_state_gauge(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A registered healthy node shows state=healthy 1 and the others 0."""
        async with running(FakeNode("n1")) as node:
            await register(session, router.url, node, in_flight=2)
            samples = await _samples(session, router.url)
        states = {
            labels["state"]: v
            for labels, v in samples["router_node_state"]
            if labels["node"] == "n1"
        }
        assert states == {"healthy": 1.0, "degraded": 0.0, "unhealthy": 0.0, "draining": 0.0}
        assert ({"group": "inference-cluster", "node": "n1"}, 2.0) in samples[
            "router_node_reported_in_flight"
        ]

    async def test_engine_cached_ratio_gauge(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The cached-token share a node's engine reported for a model shows per node and
        model; a model whose engine does not say shows none."""
        async with running(FakeNode("n1", models=("m-small", "m-big"))) as node:
            node_id = await register(session, router.url, node)
            body = report(node.models, seq=2)
            body["prefixCaches"] = [
                PrefixSummary("m-small", SCHEME, frozenset({1, 2}), 1 << 20, 1024, 0.75).to_json(),
                PrefixSummary("m-big", SCHEME, frozenset(), 1 << 20, 0).to_json(),
            ]
            put = f"{router.url}/api/server-groups/inference-cluster/nodes/{node_id}/report"
            async with session.put(put, json=body) as resp:
                assert resp.status in (200, 204), await resp.text()
            samples = await _samples(session, router.url)
        assert samples["router_node_engine_cached_ratio"] == [
            ({"group": "inference-cluster", "node": "n1", "model": "m-small"}, 0.75)
        ]


class TestAdmissionMetrics:
    """Queue waits and queue lengths of the admission queue are exported."""

    async def test_wait_histogram_and_queue_gauge(self, session: aiohttp.ClientSession) -> None:
        """Requests past a node's cap wait and are counted; the queue gauge names the model."""
        async with (
            serve(router_settings(report_interval_s=30.0, cap_factor=0.25)) as router,
            running(FakeNode("n1", chunks=3, chunk_delay_s=0.05)) as node,
        ):
            await register(session, router.url, node)  # 4 slots x 0.25: one at a time
            body = {
                "model": "m-small",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            }

            async def one() -> None:
                async with session.post(router.url + CHAT, json=body) as resp:
                    assert resp.status == 200
                    await resp.read()

            tasks = [asyncio.create_task(one()) for _ in range(4)]
            await node.wait_for(lambda n: n.active == 1)
            mid = await _samples(session, router.url)
            await asyncio.gather(*tasks)
            after = await _samples(session, router.url)
        queued = dict(
            (tuple(sorted(k.items())), v) for k, v in mid["router_admission_queue_waiting"]
        )
        assert queued[(("group", "inference-cluster"), ("model", "m-small"))] >= 1
        count = [v for k, v in after["router_admission_wait_seconds_count"]]
        assert count == [4.0]
        waited = [v for k, v in after["router_admission_wait_seconds_sum"]]
        assert waited[0] > 0.1
