"""The self-contained HTML report: the tables plus inline SVG plots (nothing is fetched)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from bench.metrics import RunStats
from bench.records import ClientRecord
from bench.report.svg import bar_chart, cdf_chart, line_chart
from bench.report.tables import Table

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1320px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}td.n{text-align:right}th{background:#f4f4f4}
.PASS{color:#176a1f;font-weight:bold}.FAIL{color:#b00020;font-weight:bold}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{border:1px solid #eee}
"""


NUMBER = re.compile(r"^[+-]?[\d,]+(\.\d+)?%?$")


def _cell_class(text: str) -> str:
    if text in ("PASS", "FAIL"):
        return text
    return "n" if NUMBER.match(text) else ""


def render_table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{_cell_class(c)}">{escape(c)}</td>' for c in row) + "</tr>"
        for row in table.rows
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    return f"<h2>{escape(table.title)}</h2><table><tr>{head}</tr>{body}</table>" + (
        f"<ul>{notes}</ul>" if notes else ""
    )


def plots(records: Iterable[ClientRecord], stats: RunStats) -> list[str]:
    """TTFT and TPOT distributions per model, tokens/s over time, share of requests per node."""
    window = stats.window
    inside = [r for r in records if window.start <= r.wall_send <= window.end and not r.error]
    ttft: dict[str, list[float]] = {}
    tpot: dict[str, list[float]] = {}
    for r in inside:
        if (t := r.ttft_s) is not None:
            ttft.setdefault(r.model, []).append(t * 1000)
        if (p := r.tpot_s) is not None:
            tpot.setdefault(r.model, []).append(p * 1000)
    nodes = Counter(r.node or "?" for r in inside)
    total = sum(nodes.values()) or 1
    shade = (window.start - stats.series_start, window.end - stats.series_start)
    return [
        cdf_chart(dict(sorted(ttft.items())), "TTFT distribution per model", "TTFT (ms)"),
        cdf_chart(dict(sorted(tpot.items())), "TPOT distribution per model", "TPOT (ms)"),
        line_chart(stats.series, "Output tokens/s over time", "tokens/s", shade=shade),
        bar_chart(
            {n: 100 * c / total for n, c in sorted(nodes.items())},
            "Share of requests per node (steady window)",
        ),
    ]


def page(title: str, summary: Mapping[str, Any], charts: list[str], tables: list[Table]) -> str:
    verdict = summary.get("pass")
    badge = (
        ""
        if verdict is None
        else f' <span class="{"PASS" if verdict else "FAIL"}">'
        + ("PASS" if verdict else "FAIL")
        + "</span>"
    )
    items = "".join(f"<li>{escape(str(k))}: {escape(str(v))}</li>" for k, v in summary.items())
    figures = f'<div class="plots">{"".join(charts)}</div>' if charts else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}{badge}</h1><ul>{items}</ul>{figures}"
        + "".join(render_table(t) for t in tables)
        + "</body></html>\n"
    )
