"""The router's long-lived loops: the health monitor runs supervised, and /ready and the
metrics show a loop that is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from node_protocol.supervision import Backoff, Supervised
from router.app import REGISTRY, TASKS, serve
from router.metrics import METRICS, RouterMetrics
from router.monitor import Monitor
from router.registry import NodeState, Registry
from router.settings import GroupSettings, StaticNode
from tests.conftest import router_settings
from tests.fakes import run_app

GROUP = "inference-cluster"
QUICK = Backoff(first_s=0.05, max_s=0.2)


async def restarts_metric(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """``router_task_restarts_total`` by task, read from ``/metrics``."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["task"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "router_task_restarts_total"
    }


async def ready(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{url}/ready") as resp:
        return resp.status, await resp.json()


@asynccontextmanager
async def model_list_node(answer: bytes) -> AsyncIterator[tuple[str, list[str]]]:
    """An agentless node answering ``/health`` 200 and ``/v1/models`` with ``answer``; yields
    its URL and the paths it was asked for, in order."""
    asked: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        asked.append(request.path)
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", handle)
    app.router.add_get("/v1/models", handle)
    async with run_app(app) as url:
        yield url, asked


def static(url: str) -> tuple[GroupSettings, ...]:
    return (GroupSettings(name=GROUP, nodes=(StaticNode(name="agentless", base_url=url),)),)


class TestMonitorSupervised:
    """The monitor is one of the app's supervised tasks, visible in /ready and /metrics."""

    async def test_ready_shows_the_monitor_and_its_restart_counter(
        self, session: aiohttp.ClientSession
    ) -> None:
        """/ready lists the monitor as running with no restarts, and the restart counter is
        exported for it at 0."""
        async with serve(router_settings()) as router:
            status, body = await ready(session, router.url)
            assert (status, body["status"]) == (200, "ok")
            assert body["tasks"] == {
                "monitor": {"state": "running", "restarts": 0, "lastError": None}
            }
            assert await restarts_metric(session, router.url) == {"monitor": 0.0}

    async def test_monitor_failure_is_logged_and_the_monitor_restarted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The monitor's loop raising (here its after-round callback, the app's wake-up of
        queued requests) is logged with its traceback and counted, and the monitor comes back
        and goes on with its rounds."""
        registry = Registry("least_loaded", 3)
        metrics = RouterMetrics(CollectorRegistry())
        rounds = 0

        def after_round() -> None:
            nonlocal rounds
            rounds += 1
            if rounds <= 2:
                raise KeyError("queue gone")

        async with aiohttp.ClientSession() as client:
            monitor = Monitor(registry, client, router_settings(), on_checked=after_round)
            task = Supervised("monitor", monitor.run, restarts=metrics.task_restarts, backoff=QUICK)
            async with task:
                async with asyncio.timeout(5):
                    while rounds < 4:  # noqa: ASYNC110 - counts the monitor's rounds
                        await asyncio.sleep(0.01)
                assert task.ok
        assert task.restarts == 2
        assert (
            metrics.registry.get_sample_value("router_task_restarts_total", {"task": "monitor"})
            == 2.0
        )
        failures = [r for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
        assert len(failures) == 2
        assert "in after_round" in caplog.text  # the traceback reaches the raising frame

    async def test_a_task_down_makes_ready_503_until_it_runs_again(
        self, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Any supervised task of the app that failed and waits to restart makes /ready 503
        with the task and its error; it counts in ``router_task_restarts_total``; /ready is 200
        again once the task runs."""
        failures = 3

        async def probe() -> None:
            nonlocal failures
            if failures:
                failures -= 1
                raise RuntimeError("probe broke")
            await asyncio.Event().wait()

        slow = Backoff(first_s=0.2, max_s=0.8)  # each 503 lasts long enough to be seen
        async with serve(router_settings()) as router:
            app = router.app
            task = Supervised("probe", probe, restarts=app[METRICS].task_restarts, backoff=slow)
            app[TASKS].append(task)
            async with task:
                seen: set[int] = set()
                async with asyncio.timeout(5):
                    while failures or task.restarts < 3 or not task.ok or 503 not in seen:
                        status, body = await ready(session, router.url)
                        seen.add(status)
                        if status == 503:
                            assert body["status"] == (
                                "task probe is restarting after RuntimeError: probe broke"
                            )
                            assert body["tasks"]["probe"]["state"] == "restarting"
                status, body = await ready(session, router.url)
                assert status == 200
                assert body["tasks"]["probe"]["restarts"] == 3
                counted = await restarts_metric(session, router.url)
                assert counted == {"monitor": 0.0, "probe": 3.0}
        assert "probe broke" in caplog.text


class TestMonitorPolls:
    """An agentless node's bad answer is its own failed check, never the monitor's end."""

    async def test_garbage_model_list_is_a_failed_check_and_polls_go_on(
        self, session: aiohttp.ClientSession
    ) -> None:
        """``/v1/models`` answering ``{"data": 5}``: the node stays unhealthy and is polled
        again and again (the monitor did not die on it), with no restart."""
        async with AsyncExitStack() as stack:
            url, asked = await stack.enter_async_context(model_list_node(b'{"data": 5}'))
            router = await stack.enter_async_context(serve(router_settings(groups=static(url))))
            async with asyncio.timeout(5):
                while asked.count("/v1/models") < 3:  # noqa: ASYNC110 - counts polls
                    await asyncio.sleep(0.02)
            node = next(iter(router.app[REGISTRY].groups[GROUP].nodes.values()))
            assert node.state(3) is NodeState.UNHEALTHY
            assert node.failed_checks >= 3
            assert await restarts_metric(session, router.url) == {"monitor": 0.0}

    async def test_null_model_list_is_no_models(self, session: aiohttp.ClientSession) -> None:
        """``"data": null`` (an empty list, as servers written in Go send it) is a passing
        check with no models."""
        async with AsyncExitStack() as stack:
            url, _ = await stack.enter_async_context(model_list_node(b'{"data": null}'))
            router = await stack.enter_async_context(serve(router_settings(groups=static(url))))
            node = next(iter(router.app[REGISTRY].groups[GROUP].nodes.values()))
            async with asyncio.timeout(5):
                while node.state(3) is not NodeState.HEALTHY:  # noqa: ASYNC110 - polls state
                    await asyncio.sleep(0.02)
            assert node.models() == ()
