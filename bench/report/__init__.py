"""Writing a run's reports: ``report.json`` (the figures), ``report.md`` and a self-contained
``report.html`` with inline SVG plots."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.outcome import RunOutcome
from bench.overhead.analysis import OverheadResult
from bench.report.html import page, plots
from bench.report.markdown import run_markdown, run_tables, tables_markdown
from bench.report.svg import bar_chart
from bench.report.tables import overhead_tables


def write_reports(outcome: RunOutcome, folder: Path) -> dict[str, Path]:
    """Write the three reports into ``folder``; returns their paths by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = outcome.to_dict()
    paths = {kind: folder / f"report.{kind}" for kind in ("json", "md", "html")}
    paths["json"].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    paths["md"].write_text(run_markdown(doc), encoding="utf-8")
    summary = {
        "pass": doc["pass"],
        "target": doc["target"],
        "started": doc["started"],
        "errors": doc["errors"]["count"],
        "calibration ok": doc["calibration_ok"],
    }
    html = page(
        f"Benchmark {doc['scenario']}",
        summary,
        plots(outcome.records, outcome.stats),
        run_tables(doc),
    )
    paths["html"].write_text(html, encoding="utf-8")
    return paths


def write_overhead_reports(result: OverheadResult, folder: Path) -> dict[str, Path]:
    """``overhead.json``, ``overhead.md`` and ``overhead.html`` for a standalone overhead run."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = result.to_dict()
    tables = overhead_tables(doc)
    paths = {kind: folder / f"overhead.{kind}" for kind in ("json", "md", "html")}
    paths["json"].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    paths["md"].write_text(tables_markdown("Router overhead", tables), encoding="utf-8")
    charts = [
        bar_chart({p: v or 0.0 for p, v in paths_rps.items()}, f"{phase}: req/s per path", "")
        for phase, paths_rps in doc["median_rps"].items()
    ]
    charts.append(
        bar_chart(
            {p: d["ttfb"].p50 or 0.0 for p, d in result.latency_ms.items()},
            "TTFB p50 at concurrency 1 (ms)",
            " ms",
        )
    )
    summary = {"generator": result.generator, "paths": ", ".join(result.latency_ms)}
    paths["html"].write_text(page("Router overhead", summary, charts, tables), encoding="utf-8")
    return paths
