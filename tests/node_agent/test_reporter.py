from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from node_agent.app import RunningAgent, serve
from node_agent.reporter import changed
from node_agent.traffic import SHARED, TokenRate, TrafficStats
from node_protocol.wire import LoadReport

from .conftest import (
    OLLAMA_TAG_DETAILS,
    FakeBackend,
    FakeLlamaCpp,
    FakeRouter,
    agent_settings,
    free_port,
    wait_until,
)


class TestRegistration:
    """The agent registers with its report included, then keeps reporting."""

    async def test_register_then_report(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = vllm
        fake, router_url = router
        settings = agent_settings(
            backend, router_urls=(router_url,), group="gpu-pool", metadata={"gpu": "A100"}
        )
        async with serve(settings) as agent:
            await fake.wait_for(lambda: len(fake.reports) >= 3)
        (reg,) = fake.registrations
        assert reg["group"] == "gpu-pool"
        assert reg["name"] == "node-a"
        assert reg["baseUrl"] == agent.url
        assert reg["healthUrl"] == f"{agent.url}/health"
        assert reg["metadata"] == {"gpu": "A100"}
        assert reg["report"]["backendKind"] == "vllm"
        seqs = [r.seq for _, r in fake.reports]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        assert seqs[0] > reg["report"]["seq"]
        assert all(node == "node-node-a" for node, _ in fake.reports)

    async def test_deregisters_on_shutdown(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = vllm
        fake, router_url = router
        async with serve(agent_settings(backend, router_urls=(router_url,))):
            await fake.wait_for(lambda: len(fake.registrations) == 1)
        assert fake.deletes == ["node-node-a"]

    async def test_reregisters_after_404(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = vllm
        fake, router_url = router
        async with serve(agent_settings(backend, router_urls=(router_url,))):
            await fake.wait_for(lambda: len(fake.reports) >= 1)
            fake.forget()
            await fake.wait_for(lambda: len(fake.registrations) == 2)
            await fake.wait_for(lambda: "node-node-a" in fake.nodes and len(fake.reports) >= 3)

    async def test_no_routers_no_registration(self, vllm: tuple[FakeBackend, str]) -> None:
        _, backend = vllm
        async with serve(agent_settings(backend)) as agent:
            assert agent.reporter.links == []
            await wait_until(lambda: agent.reporter.latest is not None)


class TestRouterOutages:
    """A router that is down is retried quietly and never holds up the others."""

    async def test_router_down_then_up(
        self,
        vllm: tuple[FakeBackend, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        _, backend = vllm
        port = free_port()
        fake = FakeRouter()
        settings = agent_settings(backend, router_urls=(f"http://127.0.0.1:{port}",))
        caplog.set_level(logging.INFO, logger="node_agent")
        server = TestServer(fake.make_app(), host="127.0.0.1", port=port)
        try:
            async with serve(settings) as agent:
                link = agent.reporter.links[0]
                await wait_until(lambda: link.failures >= 2)
                await server.start_server()
                await fake.wait_for(lambda: len(fake.reports) >= 1, within=10)
                warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
                assert len(warnings) == 1  # once per outage, not once per retry
                assert "reachable again" in caplog.text
            assert fake.deletes == ["node-node-a"]
        finally:
            await server.close()

    async def test_dead_router_does_not_block_live_one(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = vllm
        fake, router_url = router
        dead = f"http://127.0.0.1:{free_port()}"
        async with serve(agent_settings(backend, router_urls=(dead, router_url))):
            await fake.wait_for(lambda: len(fake.reports) >= 3)


async def agent_ready(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{url}/ready") as resp:
        return resp.status, await resp.json()


async def agent_restarts(client: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """``node_agent_task_restarts_total`` by task, read from ``/metrics``."""
    async with client.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["task"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "node_agent_task_restarts_total"
    }


class TestSupervision:
    """Each of the reporter's loops runs supervised on its own: one that fails is logged,
    restarted and shown in /ready and the metrics, and the others go on."""

    async def test_failing_router_lookup_is_restarted_and_reports_go_on(
        self,
        vllm: tuple[FakeBackend, str],
        router: tuple[FakeRouter, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The router DNS lookup raising an unexpected error, twice: each failure is logged
        with its traceback and counted under ``task="router-directory"``, /ready is 503 naming
        it while it waits to restart, reports to the configured router keep flowing meanwhile,
        and /ready is 200 once the lookup works."""
        _, backend = vllm
        fake, router_url = router
        failures = 2

        async def resolver(host: str, port: int) -> list[str]:
            nonlocal failures
            if failures:
                failures -= 1
                raise RuntimeError("resolver bug")
            return []

        settings = agent_settings(
            backend,
            router_urls=(router_url,),
            router_dns="http://routers.test:9",
            router_dns_interval_s=0.05,
        )
        async with serve(settings, resolver) as agent, aiohttp.ClientSession() as client:
            await wait_until(lambda: failures == 1)  # the first lookup failed
            status, body = await agent_ready(client, agent.url)
            assert status == 503
            assert body["status"] == (
                "task router-directory is restarting after RuntimeError: resolver bug"
            )
            assert body["tasks"]["router-directory"]["restarts"] == 1
            sent = len(fake.reports)
            await fake.wait_for(lambda: len(fake.reports) >= sent + 3)  # while it waits
            await wait_until(lambda: all(task.ok for task in agent.reporter.tasks), within=10)
            await wait_until(lambda: failures == 0)
            status, body = await agent_ready(client, agent.url)
            assert status == 200
            assert body["tasks"]["router-directory"] == {
                "state": "running",
                "restarts": 2,
                "lastError": "RuntimeError: resolver bug",
            }
            assert await agent_restarts(client, agent.url) == {
                "report-collector": 0.0,
                "router-directory": 2.0,
                "router-link": 0.0,
            }
        tracebacks = [r for r in caplog.records if r.exc_info and "router-directory" in r.message]
        assert len(tracebacks) == 2
        assert "in resolver" in caplog.text


class TestChanges:
    """A change in the loaded models is reported at once, not at the next tick."""

    async def test_model_load_reported_early(
        self, ollama: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        fake_backend, backend = ollama
        fake, router_url = router
        settings = agent_settings(backend, router_urls=(router_url,), report_interval_s=30.0)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            await fake.wait_for(lambda: len(fake.registrations) == 1)
            fake_backend.state.ollama_ps.append(
                {
                    "name": "mistral:latest",
                    "model": "mistral:latest",
                    "size": 5000000000,
                    "digest": "def",
                    "details": OLLAMA_TAG_DETAILS,
                    "expires_at": "2026-01-01T00:05:00Z",
                    "size_vram": 5000000000,
                    "context_length": 4096,
                }
            )
            # a request (for the model that just loaded) hints the reporter to look again
            r = await client.post(
                f"{agent.url}/v1/chat/completions",
                json={"model": "mistral", "messages": []},
            )
            assert r.status == 200

            def mistral_loaded() -> bool:
                return any(
                    m.id == "mistral:latest" and m.loaded
                    for _, rep in fake.reports
                    for m in rep.models
                )

            await fake.wait_for(mistral_loaded, within=5)

    def test_health_change_counts(self) -> None:
        base = LoadReport(seq=1, sent_at=0.0, backend_kind="vllm", backend_health="ok", in_flight=0)
        assert changed(None, base)
        assert not changed(base, LoadReport(2, 1.0, "vllm", "ok", 5))
        assert changed(base, LoadReport(2, 1.0, "vllm", "degraded", 0))


class TestSilentBackend:
    """A backend that stops answering (a stopped process) holds up no report."""

    async def test_reports_count_the_requests_held_at_a_backend_that_answers_nothing(
        self, vllm: tuple[FakeBackend, str]
    ) -> None:
        fake, backend = vllm
        # Probes time out after 5 s: a report that waited for one would show nothing new for
        # that long, while reports are due every 0.05 s.
        async with (
            serve(agent_settings(backend, control_timeout_s=5.0)) as agent,
            aiohttp.ClientSession() as client,
        ):
            await wait_until(lambda: agent.reporter.latest is not None)
            fake.state.answering.clear()
            body = {"model": "m", "messages": [], "stream": True}
            sent = asyncio.create_task(client.post(f"{agent.url}/v1/chat/completions", json=body))
            try:
                await wait_until(lambda: _latest(agent).in_flight == 1, within=2.5)
            finally:
                fake.state.answering.set()
            (await sent).release()

    async def test_a_backend_that_answers_nothing_is_unhealthy_after_one_probe_timeout(
        self, llamacpp: tuple[FakeLlamaCpp, str]
    ) -> None:
        fake, backend = llamacpp
        async with serve(agent_settings(backend, control_timeout_s=1.0)) as agent:
            await wait_until(lambda: agent.reporter.latest is not None)
            fake.ctl.answering.clear()
            try:
                await wait_until(lambda: _latest(agent).backend_health == "unhealthy")
                # llama.cpp's facts are read one call after another, each with the probe's
                # timeout: the health shows before the last of them is even asked.
                assert "/metrics" not in fake.unanswered, fake.unanswered
            finally:
                fake.ctl.answering.set()
            await wait_until(lambda: _latest(agent).backend_health == "ok")


def _latest(agent: RunningAgent) -> LoadReport:
    report = agent.reporter.latest
    assert report is not None
    return report


class TestShutdown:
    """Shutdown deregisters first, then lets in-flight streams finish before closing."""

    async def test_drain_after_deregistration(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        fake_backend, backend = vllm
        fake, router_url = router
        fake_backend.state.gate = asyncio.Event()
        async with AsyncExitStack() as outer, aiohttp.ClientSession() as client:
            stack = AsyncExitStack()
            outer.push_async_callback(stack.aclose)
            agent = await stack.enter_async_context(
                serve(agent_settings(backend, router_urls=(router_url,)))
            )
            await fake.wait_for(lambda: len(fake.registrations) == 1)
            async with client.post(
                f"{agent.url}/v1/chat/completions",
                json={"model": "m", "messages": [], "stream": True},
            ) as r:
                await r.content.readuntil(b"\n\n")
                closing = asyncio.create_task(stack.aclose())
                await fake.wait_for(lambda: fake.deletes == ["node-node-a"])
                assert not closing.done()
                fake_backend.state.gate.set()
                body = await r.read()
            assert body.endswith(b"data: [DONE]\n\n")
            async with asyncio.timeout(5):
                await closing


class TestTokenRate:
    """Output tokens per second come from a sliding window; idle means unknown, not zero."""

    def test_busy_seconds_give_the_mean_in_flight(self) -> None:
        """Request-seconds in flight over a window, per second, are the mean number in flight:
        two requests for the whole window are two, whatever is in flight at its end."""
        stats = TrafficStats()
        busy = TokenRate(window_s=10.0)
        start = time.monotonic()
        assert busy.sample(start, stats.busy_seconds(start)) is None
        stats.enter(SHARED)
        stats.enter(SHARED)
        time.sleep(0.2)
        stats.leave(SHARED)
        now = time.monotonic()
        mean = busy.sample(now, stats.busy_seconds(now))
        assert mean is not None
        assert 1.8 < mean <= 2.0
        assert stats.in_flight == 1

    def test_window(self) -> None:
        rate = TokenRate(window_s=10.0)
        assert rate.sample(0.0, 0) is None
        assert rate.sample(1.0, 0) is None
        assert rate.sample(2.0, 100) == pytest.approx(50.0)
        assert rate.sample(30.0, 100) is None  # nothing produced in the last window

    async def test_reported(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        _, backend = vllm
        fake, router_url = router
        async with serve(agent_settings(backend, router_urls=(router_url,))) as agent:
            async with aiohttp.ClientSession() as client:
                body = {"model": "m", "messages": [], "stream": True}
                body["stream_options"] = {"include_usage": True}
                async with client.post(f"{agent.url}/v1/chat/completions", json=body) as r:
                    await r.read()
            await fake.wait_for(
                lambda: any((rep.output_tokens_per_s or 0) > 0 for _, rep in fake.reports)
            )
        # the rate comes with the mean number in flight over its window
        assert any(
            (rep.output_tokens_per_s or 0) > 0 and (rep.mean_in_flight or 0) > 0
            for _, rep in fake.reports
        )
