"""Markdown rendering of the report tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.report.tables import (
    Table,
    calibration_table,
    checks_table,
    latency_table,
    models_table,
    overhead_tables,
    share_table,
    throughput_table,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(table: Table) -> list[str]:
    out = [f"## {table.title}", ""]
    if table.rows:
        out.append("| " + " | ".join(table.header) + " |")
        out.append("|" + "---|" * len(table.header))
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    else:
        out.append("(none)")
    out += [""] + [f"- {n}" for n in table.notes] + ([""] if table.notes else [])
    return out


def run_tables(doc: Mapping[str, Any]) -> list[Table]:
    tables = [
        checks_table(doc),
        models_table(doc),
        throughput_table(doc),
        latency_table(doc),
        share_table(doc),
    ]
    cal = calibration_table(doc)
    if cal is not None:
        tables.append(cal)
    paired = doc["overhead"]["paired"]
    if paired:
        tables += overhead_tables(paired)
    return tables


def run_markdown(doc: Mapping[str, Any]) -> str:
    header = doc["overhead"]["router_header_ms"]
    lines = [
        f"# Benchmark `{doc['scenario']}`: {'PASS' if doc['pass'] else 'FAIL'}",
        "",
        f"{doc['description']}",
        "",
        f"- target: `{doc['target']}`"
        + (f" (cluster `{doc['cluster']}`)" if doc["cluster"] else ""),
        f"- started: {doc['started']}; load: {doc['load']['mode']} loop, "
        f"{doc['load']['users']} users, {doc['load']['duration_s']:g} s "
        f"(warm-up {doc['load']['warmup_s']:g} s); steady window {doc['window']['length_s']:.1f} s",
        f"- errors: {doc['errors']['count']} ({doc['errors']['rate']:.2%}); calibration ok: "
        f"{doc['calibration_ok']}; router overhead header p50 {_ms(header['p50'])}, "
        f"p99 {_ms(header['p99'])}",
        "",
    ]
    for table in run_tables(doc):
        lines += render_table(table)
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in doc["definitions"].items()]
    lines += [""] + [f"> {n}" for n in doc["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def tables_markdown(title: str, tables: Iterable[Table]) -> str:
    lines = [f"# {title}", ""]
    for table in tables:
        lines += render_table(table)
    return "\n".join(lines).rstrip() + "\n"
