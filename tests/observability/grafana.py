"""Reads the shipped Grafana dashboards: their panels, the PromQL of each, and their variables.

Grafana fills in variables before it sends a query; :func:`substitute` does the same with fixed
values (every ``$group``-like variable matches all, ``$__rate_interval`` is 30 s), so a query can
be sent to Prometheus as Grafana would send it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
GRAFANA = DASHBOARDS / "grafana"
PROMETHEUS_YML = DASHBOARDS / "prometheus.yml"

# The values Grafana would put in; a variable not listed here fails the substitution.
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}
MATCH_ALL = ".*"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")
_METRIC = re.compile(r"\b(?:router|node_agent)_[a-z0-9_]+\b")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]"


@dataclass(frozen=True, slots=True)
class VariableQuery:
    dashboard: str
    name: str
    label: str
    match: str | None  # the series selector of label_values(selector, label), if any


def dashboard_files() -> list[Path]:
    return sorted(GRAFANA.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (a collapsed row keeps its own)."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries() -> list[PanelQuery]:
    out = []
    for path in dashboard_files():
        board = load(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                out.append(
                    PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
                )
    return out


def variable_queries() -> list[VariableQuery]:
    out = []
    for path in dashboard_files():
        board = load(path)
        for var in board["templating"]["list"]:
            if var["type"] != "query":
                continue
            query = var["query"]
            text = query["query"] if isinstance(query, dict) else query
            found = _LABEL_VALUES.match(text.strip())
            if found is None:
                raise ValueError(f"{board['title']}: variable {var['name']}: not label_values()")
            out.append(VariableQuery(board["title"], var["name"], found[2], found[1]))
    return out


def substitute(expr: str) -> str:
    """The query as Grafana sends it with every dashboard variable set to All."""

    def value(found: re.Match[str]) -> str:
        name = found[1] or found[2]
        if name in BUILTINS:
            return BUILTINS[name]
        if name.startswith("__"):
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return MATCH_ALL

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The names of our series a query reads (``router_*`` and ``node_agent_*``)."""
    return set(_METRIC.findall(expr))
