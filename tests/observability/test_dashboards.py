"""The shipped Grafana dashboards and scrape config, checked without a Prometheus server."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import local_cluster
from tests.observability import grafana

# Panel types built into Grafana: the dashboards must import with no plugin installed.
CORE_PANELS = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
    pos = panel["gridPos"]
    return {
        (x, y)
        for x in range(pos["x"], pos["x"] + pos["w"])
        for y in range(pos["y"], pos["y"] + pos["h"])
    }


class TestDashboardModels:
    """Each dashboard is a Grafana JSON model that imports into any Grafana with Prometheus."""

    def test_the_three_dashboards_are_shipped(self) -> None:
        """Router overview, nodes and GPUs, and tenants, each with its own uid and tag."""
        boards = [grafana.load(p) for p in grafana.dashboard_files()]
        uids = sorted(b["uid"] for b in boards)
        assert uids == [
            "inference-router-nodes",
            "inference-router-overview",
            "inference-router-tenants",
        ]
        assert all("inference-router" in b["tags"] for b in boards)

    def test_datasource_is_a_variable(self) -> None:
        """Every panel and every query reads from the $datasource variable, of type prometheus."""
        for path in grafana.dashboard_files():
            board = grafana.load(path)
            variables = {v["name"]: v for v in board["templating"]["list"]}
            assert variables["datasource"]["type"] == "datasource", path.name
            assert variables["datasource"]["query"] == "prometheus", path.name
            for var in variables.values():
                if var["type"] == "query":
                    assert var["datasource"] == DATASOURCE, (path.name, var["name"])
            for panel in grafana.panels(board):
                if panel["type"] == "row":
                    continue
                assert panel["datasource"] == DATASOURCE, (path.name, panel["title"])
                for target in panel["targets"]:
                    assert target["datasource"] == DATASOURCE, (path.name, panel["title"])

    def test_panels_are_core_and_laid_out(self) -> None:
        """Only built-in panel types; unique ids and refIds; panels fit 24 columns, no overlap."""
        for path in grafana.dashboard_files():
            board = grafana.load(path)
            seen: set[tuple[int, int]] = set()
            ids = []
            for panel in grafana.panels(board):
                where = (path.name, panel["title"])
                assert panel["type"] in CORE_PANELS, where
                ids.append(panel["id"])
                pos = panel["gridPos"]
                assert pos["x"] >= 0, where
                assert pos["x"] + pos["w"] <= 24, where
                cells = _cells(panel)
                assert not cells & seen, f"{where} overlaps another panel"
                seen |= cells
                if panel["type"] != "row":
                    refs = [t["refId"] for t in panel["targets"]]
                    assert refs, where
                    assert len(set(refs)) == len(refs), where
                    assert panel.get("description"), where
            assert len(set(ids)) == len(ids), path.name

    def test_every_variable_is_known(self) -> None:
        """Every $variable a query uses is a dashboard variable or a Grafana built-in."""
        for path in grafana.dashboard_files():
            board = grafana.load(path)
            names = {v["name"] for v in board["templating"]["list"]} | set(grafana.BUILTINS)
            for panel in grafana.panels(board):
                for target in panel.get("targets", []):
                    used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                    assert used <= names, (path.name, panel["title"], used - names)
                    grafana.substitute(target["expr"])


async def _exported(session: aiohttp.ClientSession, url: str) -> set[str]:
    """The series names a /metrics page declares, labelled families with no samples included."""
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


class TestQueriesUseExportedMetrics:
    """Every router_* and node_agent_* series a panel reads is one the code exports."""

    async def test_every_panel_metric_is_exported(self) -> None:
        """A local cluster's router and agents (an Ollama and a vLLM box) declare each one."""
        async with local_cluster() as cluster, aiohttp.ClientSession() as session:
            pages = await asyncio.gather(
                _exported(session, cluster.router.url),
                *(_exported(session, a.local_url) for a in cluster.agents.values()),
            )
        exported = set().union(*pages)
        missing = {
            str(q): sorted(grafana.metric_names(q.expr) - exported)
            for q in grafana.panel_queries()
            if grafana.metric_names(q.expr) - exported
        }
        assert not missing
        used = set().union(*(grafana.metric_names(q.expr) for q in grafana.panel_queries()))
        assert {"router_requests_total", "router_gpu_memory_used_bytes"} <= used


class TestScrapeConfig:
    """prometheus.yml is valid and scrapes the router and agents as the dashboards expect."""

    def test_job_names_and_node_labels(self) -> None:
        """The jobs the panels read (up{job="node-agent"}) exist; agent targets carry `node`."""
        text = grafana.PROMETHEUS_YML.read_text(encoding="utf-8")
        jobs = re.findall(r"job_name:\s*(\S+)", text)
        assert jobs == ["inference-router", "node-agent"]
        assert re.search(r"^\s+node: \S+", text, re.MULTILINE)
        panel_jobs = {
            job for q in grafana.panel_queries() for job in re.findall(r'job="([^"]+)"', q.expr)
        }
        assert panel_jobs <= set(jobs)

    async def test_promtool_accepts_it(self, promtool_bin: str) -> None:
        """`promtool check config` passes."""
        proc = await asyncio.create_subprocess_exec(
            promtool_bin,
            "check",
            "config",
            str(grafana.PROMETHEUS_YML),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
