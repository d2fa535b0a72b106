"""Every dashboard query, evaluated by a real Prometheus that scrapes a local cluster under load.

The cluster (router, three emulated GPU boxes, an agent beside each) runs in process on port 0;
Prometheus runs as a process with a config written for the cluster's real ports and a 1 s scrape
interval. The load goes in two rounds with a scrape between them, so counters and histograms have
grown between two samples and rates and quantiles come out as numbers, not NaN. Each round has
streamed requests from three tenants and one for an unknown model (404); the first also has a node
answering 500 before the first byte (a retry, then 502), one dying mid-stream with no other node
for its model (a cut stream) and one dying mid-stream beside a node that goes on with it (a
resumed stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from node_protocol.prompt_prefix import SCHEME
from node_protocol.wire import PrefixSummary
from tests.e2e.conftest import GROUP, LocalCluster, local_cluster
from tests.fakes import FakeNode, in_background, register, report, running
from tests.observability import grafana

SCRAPE_S = 1
ROUTER_JOB = "inference-router"  # the job names of dashboards/prometheus.yml
AGENT_JOB = "node-agent"
MODELS = ("llama3.1:8b", "llama2:13b", "llama3.1:70b")
TENANTS = ("acme", "globex", "initech")
STREAMS_PER_ROUND = 12
CUT_MODEL = "m-cut"
RESUME_MODEL = "m-resume"
FAIL_MODEL = "m-fail"
CACHE_MODEL = "m-cache"
# A system prompt of several prompt-cache blocks: the router fingerprints it.
REPORT_EVERY_S = 0.2  # the router's report interval in the tests' settings
LONG_SYSTEM = "You are an agent of the fleet. Follow the tools' contracts exactly. " * 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@dataclass
class Prometheus:
    url: str
    log: Path
    session: aiohttp.ClientSession

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        async with self.session.get(self.url + path, params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def label_values(self, label: str, match: str | None) -> list[str]:
        params = {} if match is None else {"match[]": match}
        values: list[str] = await self._get(f"/api/v1/label/{label}/values", params)
        return values

    async def scalar(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def wait_scraped(self, targets: int, after: float, limit_s: float = 15.0) -> None:
        """Wait until every target is up and has been scraped since ``after`` (Unix time)."""
        async with asyncio.timeout(limit_s):
            while True:
                up = await self.scalar("count(up == 1)")
                oldest = await self.scalar("min(timestamp(up))")
                if up == targets and oldest is not None and oldest > after:
                    return
                await asyncio.sleep(0.2)


def _config(cluster: LocalCluster) -> dict[str, Any]:
    """dashboards/prometheus.yml with the cluster's real ports (JSON is YAML)."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {
                "job_name": ROUTER_JOB,
                "static_configs": [{"targets": [_host_port(cluster.router.url)]}],
            },
            {
                "job_name": AGENT_JOB,
                "static_configs": [
                    {"targets": [_host_port(agent.local_url)], "labels": {"node": name}}
                    for name, agent in cluster.agents.items()
                ],
            },
        ],
    }


@contextlib.asynccontextmanager
async def run_prometheus(
    binary: str, workdir: Path, config: dict[str, Any], session: aiohttp.ClientSession
) -> AsyncIterator[Prometheus]:
    config_file = workdir / "prometheus.yml"
    config_file.write_bytes(orjson.dumps(config))
    log = workdir / "prometheus.log"
    address = f"127.0.0.1:{_free_port()}"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://{address}", log, session)
    try:
        async with asyncio.timeout(20):
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"prometheus exited:\n{log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(prometheus.url + "/-/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield prometheus
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _chat(
    session: aiohttp.ClientSession,
    cluster: LocalCluster,
    model: str,
    tenant: str | None,
    system: str | None = None,
) -> tuple[int, bytes]:
    messages = [{"role": "user", "content": "Tell me about GPUs."}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body = {"model": model, "stream": True, "max_tokens": 12, "messages": messages}
    headers = {} if tenant is None else {"X-Octopus-Tenant-Id": tenant}
    async with session.post(
        cluster.base_url + "/chat/completions", json=body, headers=headers
    ) as resp:
        return resp.status, await resp.read()


async def load_round(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    """Streams from three tenants to the three models, one request for an unknown model, and a
    conversation long enough for the router to route its prompt on the nodes' caches (to the
    "cacher" node, registered first)."""
    streams = await asyncio.gather(
        *(
            _chat(session, cluster, MODELS[i % len(MODELS)], TENANTS[i % len(TENANTS)])
            for i in range(STREAMS_PER_ROUND)
        )
    )
    assert [status for status, _ in streams] == [200] * STREAMS_PER_ROUND, streams
    status, _ = await _chat(session, cluster, "no-such-model", "acme")
    assert status == 404
    # The second turn finds its prefix where the first went: on the one node serving the model,
    # so that every round counts a cached prefix whatever the emulated boxes' loads look like
    # to the router on a busy machine.
    for _ in range(2):
        status, body = await _chat(session, cluster, CACHE_MODEL, "acme", system=LONG_SYSTEM)
        assert status == 200, body


@contextlib.asynccontextmanager
async def cache_reporter(
    session: aiohttp.ClientSession, cluster: LocalCluster, node: FakeNode
) -> AsyncIterator[None]:
    """``node`` registers as one whose agent says what share of prompt tokens its engine took
    from its cache (the emulated boxes' engines do not say), and reports on as an agent does,
    so that it stays healthy for the whole test."""
    node_id = await register(session, cluster.router.url, node)
    body = report(node.models)
    summary = PrefixSummary(CACHE_MODEL, SCHEME, frozenset({1, 2}), 1 << 20, 4096, 0.75)
    body["prefixCaches"] = [summary.to_json()]
    url = f"{cluster.router.url}/api/server-groups/{GROUP}/nodes/{node_id}/report"

    async def reports() -> None:
        for seq in itertools.count(2):
            async with session.put(url, json=body) as resp:
                assert resp.status in (200, 204), await resp.text()
            body["seq"] = seq
            await asyncio.sleep(REPORT_EVERY_S)

    async with in_background(reports):
        yield


async def faults(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    """A node that answers 500 before the first byte (a retry, then 502), one that dies
    mid-stream alone (a cut stream) and one that dies beside a node that goes on with its
    stream (a resumed stream). Fake nodes, so the breaker never opens on an emulated box."""
    async with (
        running(FakeNode("failer", models=(FAIL_MODEL,), mode="error_500")) as failer,
        running(FakeNode("cutter", models=(CUT_MODEL,), mode="die_mid_stream")) as cutter,
        running(FakeNode("dier", models=(RESUME_MODEL,), mode="die_mid_stream")) as dier,
        running(FakeNode("goer", models=(RESUME_MODEL,))) as goer,
    ):
        for node in (failer, cutter, dier):
            await register(session, cluster.router.url, node)
        await register(session, cluster.router.url, goer, in_flight=1)  # "dier" goes first
        status, _ = await _chat(session, cluster, FAIL_MODEL, "globex")
        assert status == 502
        status, body = await _chat(session, cluster, CUT_MODEL, None)
        assert status == 200
        assert b'"error"' in body  # the router's SSE error event after the cut
        status, body = await _chat(session, cluster, RESUME_MODEL, None)
        assert status == 200
        assert b'"error"' not in body  # the stream went on at "goer"


class TestDashboardsAgainstPrometheus:
    """Every panel and variable query of every dashboard returns data from a real Prometheus."""

    async def test_every_query_returns_data(self, prometheus_bin: str, tmp_path: Path) -> None:
        """After two rounds of load, each panel query gives at least one series with a finite
        value and each variable query lists at least one value."""
        async with (
            local_cluster() as cluster,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
            run_prometheus(prometheus_bin, tmp_path, _config(cluster), session) as prometheus,
            running(FakeNode("cacher", models=(CACHE_MODEL,))) as cacher,
        ):
            targets = 1 + len(cluster.agents)
            await prometheus.wait_scraped(targets, after=time.time())
            async with cache_reporter(session, cluster, cacher):
                await load_round(session, cluster)
                await faults(session, cluster)
                await prometheus.wait_scraped(targets, after=time.time())
                await load_round(session, cluster)
                await prometheus.wait_scraped(targets, after=time.time())
                failures = []
                results = {}
                for q in grafana.panel_queries():
                    try:
                        result = await prometheus.query(grafana.substitute(q.expr))
                    except AssertionError as exc:
                        failures.append(f"{q}: {exc}")
                        continue
                    results[q.panel] = result
                    values = [float(s["value"][1]) for s in result]
                    if not any(math.isfinite(v) for v in values):
                        failures.append(f"{q}: no data ({values or 'empty'}) for {q.expr}")
                for v in grafana.variable_queries():
                    match = None if v.match is None else grafana.substitute(v.match)
                    if not await prometheus.label_values(v.label, match):
                        failures.append(f"{v.dashboard} / variable {v.name}: no values")
        assert not failures, "\n".join(failures)
        # The state panels encode healthy 1, degraded 2, unhealthy 3, draining 4.
        states = {r["metric"]["node"]: float(r["value"][1]) for r in results["Node state now"]}
        assert {states[name] for name in cluster.agents} == {1.0}
