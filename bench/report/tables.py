"""The report's tables, built once from ``report.json``'s dict and rendered as Markdown or HTML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    notes: list[str] = field(default_factory=list)


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[passed]


def checks_table(doc: Mapping[str, Any]) -> Table:
    rows = [(c["name"], verdict(c["passed"]), c["detail"]) for c in doc["checks"]]
    return Table("Checks", ("check", "result", "detail"), rows)


def models_table(doc: Mapping[str, Any]) -> Table:
    rows = []
    for model, m in doc["models"].items():
        s = m["stats"]
        rows.append(
            (
                model,
                m["class"] or "-",
                str(s["requests"]),
                str(sum(s["errors"].values())),
                num(s["ttft_ms"]["p50"]),
                num(s["ttft_ms"]["p99"]),
                num(s["tpot_ms"]["p50"], 2),
                num(m["decode_tok_s_p50"]),
                num(m["target_min_tok_s"], 0),
                num(m["aggregate_tok_s"]),
                num(m["aggregate_target_tok_s"]),
                verdict(m["pass"]),
            )
        )
    header = (
        "model",
        "class",
        "requests",
        "errors",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "decode p50 tok/s",
        "floor tok/s",
        "aggregate tok/s",
        "aggregate target",
        "result",
    )
    notes = [f"{model}: {m['reason']}" for model, m in doc["models"].items()]
    return Table("Per model (steady window)", header, rows, notes)


def latency_table(doc: Mapping[str, Any]) -> Table:
    rows = []
    for model, m in [*doc["models"].items(), ("all", {"stats": doc["overall"]})]:
        s = m["stats"]
        for key, label in (
            ("ttfb_ms", "TTFB ms"),
            ("ttft_ms", "TTFT ms"),
            ("e2e_ms", "E2E ms"),
            ("tpot_ms", "TPOT ms"),
            ("itl_ms", "ITL ms"),
            ("decode_tok_s", "decode tok/s"),
            ("dispatch_lag_ms", "dispatch lag ms (open loop)"),
        ):
            d = s[key]
            if key == "dispatch_lag_ms" and not d["n"]:
                continue
            rows.append(
                (
                    model,
                    label,
                    str(d["n"]),
                    num(d["p50"], 2),
                    num(d["p90"], 2),
                    num(d["p99"], 2),
                    num(d["mean"], 2),
                )
            )
    return Table("Distributions", ("model", "metric", "N", "p50", "p90", "p99", "mean"), rows)


def throughput_table(doc: Mapping[str, Any]) -> Table:
    rows = []
    for model, m in [*doc["models"].items(), ("all", {"stats": doc["overall"]})]:
        s = m["stats"]
        rows.append(
            (
                model,
                num(s["output_tok_s"]),
                num(s["decoding_streams"], 2),
                num(s["goodput_rps"], 2),
                num(s["tokens_per_chunk"], 2),
                ", ".join(f"{k} {v}" for k, v in s["tokens_from"].items()) or "-",
                ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "none",
            )
        )
    header = (
        "model",
        "output tok/s",
        "streams decoding",
        "goodput req/s",
        "tokens/chunk",
        "token counts from",
        "errors",
    )
    return Table("Throughput and errors", header, rows)


def share_table(doc: Mapping[str, Any]) -> Table:
    rows = [
        (model, node, f"{share:.1%}")
        for model, shares in doc["node_share"].items()
        for node, share in shares.items()
    ]
    return Table("Share of requests per node", ("model", "node", "share"), rows)


def calibration_table(doc: Mapping[str, Any]) -> Table | None:
    cal = doc.get("calibration")
    if not cal:
        return None
    rows = [
        (
            p["path"],
            num(p["ttft_ms_p50"]),
            _pct(p["ttft_error"]),
            num(p["decode_tok_s_p50"]),
            _pct(p["decode_error"]),
            str(p["requests"]),
            num(p["generator_cpu_percent"], 0),
            verdict(p["ok"]),
        )
        for p in cal["paths"]
    ]
    notes = [
        f"node set to TTFT {cal['expected_ttft_ms']:g} ms and "
        f"{cal['expected_decode_tok_s']:.2f} tok/s per stream at {cal['users']} streams; "
        f"tolerance ±{cal['tolerance']:.0%}"
    ]
    if not cal["ok"]:
        notes.append("calibration missed: the load generator was the bottleneck")
    header = (
        "path",
        "TTFT p50 ms",
        "TTFT error",
        "decode p50 tok/s",
        "decode error",
        "requests",
        "generator CPU %",
        "result",
    )
    return Table("Calibration", header, rows, notes)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def overhead_tables(paired: Mapping[str, Any]) -> list[Table]:
    """Added latency, throughput and ratios, and the targets, from an overhead result."""
    lat_rows = []
    for path, keys in paired["latency_ms"].items():
        added = paired["added_ms"].get(path, {})
        for key in ("ttfb", "ttft", "e2e"):
            d, a = keys[key], added.get(key, {})
            lat_rows.append(
                (
                    path,
                    key.upper(),
                    num(d["p50"], 3),
                    num(d["p99"], 3),
                    num(a.get("p50"), 3),
                    num(a.get("p99"), 3),
                )
            )
    latency = Table(
        "Latency at concurrency 1 (paired rounds)",
        ("path", "metric", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"),
        lat_rows,
        [
            f"router's own X-Router-Overhead-Ms: p50 "
            f"{num(paired['router_header_ms']['p50'], 3)} ms, p99 "
            f"{num(paired['router_header_ms']['p99'], 3)} ms"
        ],
    )
    tp_rows = [
        (phase, path, num(rps, 0))
        for phase, paths in paired["median_rps"].items()
        for path, rps in paths.items()
    ]
    throughput = Table(
        f"Throughput (median of rounds, generator: {paired['generator']})",
        ("workload", "path", "req/s"),
        tp_rows,
    )
    ratios = Table(
        "Ratios (median of per-round ratios; latency: ratio of p50s)",
        ("ratio", "value"),
        [(k, num(v, 3)) for k, v in paired["ratios"].items()],
    )
    targets = Table(
        "Targets",
        ("target", "measured", "limit", "result"),
        [
            (
                t["name"],
                num(t["measured"], 3),
                f"{t['kind']} {t['limit']:g}",
                verdict(t["met"]) + (f" ({t['note']})" if t["note"] else ""),
            )
            for t in paired["targets"]
        ],
        list(paired.get("notes", [])),
    )
    return [targets, latency, throughput, ratios]
