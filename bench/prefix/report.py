"""Per-policy figures of a prefix run, their ratios to round robin, and the printed table.

Cached share: the engines' cached prompt tokens over all prompt tokens, summed over the
successful turns. Later turns: 2 onwards, the ones a conversation's own history could serve
from a cache. Busiest node: its request count over the mean of every node's (1.0 is even).
A policy runs several times (fresh fleets); its turns are pooled, and the spread of each run's
own later-turn p50 shows how much the machine's load moved the figures.

Cached turns: later turns that found at least ``CACHED_TURN`` of their prompt in the engine's
cache. Their median TTFT is what a later turn takes when routing has done all it can for it on
this machine (the rest is the new message's prefill, decoding, and the other slots' work on
the same cores); as a multiple of round robin's later-turn median it bounds what any router can
reach on that ratio. Stayed: later turns served by the node that served the conversation's
previous turn.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .client import Turn
from .workload import engine_flags

BASELINE = "round_robin"
CACHED_TURN = 0.9


def _ms(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def _imbalance(turns: Sequence[Turn], nodes: Sequence[str]) -> float | None:
    served = Counter(t.record.node for t in turns if t.record.node is not None)
    counts = [served.get(node, 0) for node in nodes]
    mean = sum(counts) / len(counts) if counts else 0.0
    return max(counts) / mean if mean else None


def _later(turns: Sequence[Turn]) -> list[float]:
    return [
        t.record.ttft_s
        for t in turns
        if t.turn > 1 and t.record.error is None and t.record.ttft_s is not None
    ]


def _cached_later(turns: Sequence[Turn]) -> list[float]:
    return [
        t.record.ttft_s
        for t in turns
        if t.turn > 1
        and t.record.error is None
        and t.record.ttft_s is not None
        and t.record.prompt_tokens
        and (t.cached_tokens or 0) >= CACHED_TURN * t.record.prompt_tokens
    ]


def _stayed(run: Sequence[Turn]) -> int:
    """Later turns served where the conversation's previous turn was (within one run)."""
    last: dict[int, str | None] = {}
    stayed = 0
    for t in sorted(run, key=lambda t: (t.conversation, t.turn)):
        node = t.record.node if t.record.error is None else None
        stayed += t.turn > 1 and node is not None and last.get(t.conversation) == node
        last[t.conversation] = node
    return stayed


def summarize(policy: str, runs: Sequence[Sequence[Turn]], nodes: Sequence[str]) -> dict[str, Any]:
    """One policy's figures, pooled over its runs (``nodes``: every node of a fleet); the
    busiest node's share is each run's own, averaged."""
    turns = [t for run in runs for t in run]
    ok = [t for t in turns if t.record.error is None]
    prompt = sum(t.record.prompt_tokens or 0 for t in ok)
    cached = sum(t.cached_tokens or 0 for t in ok)
    first = [t.record.ttft_s for t in ok if t.turn == 1 and t.record.ttft_s is not None]
    later = _later(turns)
    cached_later = _cached_later(turns)
    served = Counter(t.record.node for t in turns if t.record.node is not None)
    imbalances = [v for v in (_imbalance(run, nodes) for run in runs) if v is not None]
    return {
        "policy": policy,
        "runs": len(runs),
        "requests": len(turns),
        "failed": len(turns) - len(ok),
        "errors": dict(Counter(str(t.record.error) for t in turns if t.record.error)),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cached_share": round(cached / prompt, 4) if prompt else None,
        "missing_cache_counts": sum(t.cached_tokens is None for t in ok),
        "first_turn_ttft_p50_ms": _ms(first, 50),
        "later_ttft_p50_ms": _ms(later, 50),
        "later_ttft_p99_ms": _ms(later, 99),
        "later_ttft_p50_ms_by_run": [_ms(_later(run), 50) for run in runs],
        "later_stayed": sum(_stayed(run) for run in runs),
        "cached_turns": len(cached_later),
        "cached_turn_ttft_p50_ms": _ms(cached_later, 50),
        "node_requests": {node: served.get(node, 0) for node in nodes},
        "busiest_over_mean": round(sum(imbalances) / len(imbalances), 3) if imbalances else None,
    }


def _ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return None
    return round(value / base, 3)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's later-turn TTFTs and cached share as multiples of round robin's (if run)."""
    base = next((r for r in rows if r["policy"] == BASELINE), None)
    for row in rows:
        row["vs_round_robin"] = {
            key: _ratio(row[key], base[key]) if base else None
            for key in ("later_ttft_p50_ms", "later_ttft_p99_ms", "cached_share")
        }
        # the cached turns' median against round robin's later one: the floor of that ratio
        floor = _ratio(row["cached_turn_ttft_p50_ms"], base["later_ttft_p50_ms"]) if base else None
        row["vs_round_robin"]["cached_turn_ttft_p50_ms"] = floor


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


HEADER = (
    "policy", "requests", "failed", "cached share", "turn-1 p50 ms", "later p50 ms",
    "later p99 ms", "later p50 by run", "later p50 x rr", "later p99 x rr", "busiest/mean",
    "stayed", "cached turns", "cached-turn p50 ms", "cached-turn p50 x rr",
)  # fmt: skip


def _server_flags(report: dict[str, Any]) -> str:
    """The servers' flags beyond ``--parallel``, as given to them (each after a space)."""
    flags = engine_flags(report.get("cache_ram_mib"), tuple(report.get("server_flags", ())))
    return "".join(" " + shlex.quote(flag) for flag in flags)


def render(report: dict[str, Any]) -> str:
    """The per-policy table (Markdown) and the conditions it was measured under."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in report["policies"]:
        cells = [
            r["policy"],
            str(r["requests"]),
            str(r["failed"]),
            _cell(r["cached_share"], ".1%"),
            _cell(r["first_turn_ttft_p50_ms"], ".0f"),
            _cell(r["later_ttft_p50_ms"], ".0f"),
            _cell(r["later_ttft_p99_ms"], ".0f"),
            "/".join(_cell(v, ".0f") for v in r["later_ttft_p50_ms_by_run"]),
            _cell(r["vs_round_robin"]["later_ttft_p50_ms"], ".2f"),
            _cell(r["vs_round_robin"]["later_ttft_p99_ms"], ".2f"),
            _cell(r["busiest_over_mean"], ".2f"),
            str(r["later_stayed"]),
            str(r["cached_turns"]),
            _cell(r["cached_turn_ttft_p50_ms"], ".0f"),
            _cell(r["vs_round_robin"]["cached_turn_ttft_p50_ms"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    w = report["workload"]
    probe = report["cold_probe"]
    lines.append(
        f"\nper policy {w['runs']} run(s) of {w['conversations']} conversations x {w['turns']} "
        f"turns, {w['kinds']} system "
        f"prompts, think <= {w['max_think_s']:g} s, max_tokens {w['max_tokens']}, seed "
        f"{w['seed']}; {report['servers']} llama-servers --parallel {report['parallel']}"
        f"{_server_flags(report)}; "
        f"cold {probe['prompt_tokens']}-token prompt: first token in {probe['ttft_ms']:.0f} ms; "
        f"load average {report['load_average'][0]:.2f} before, {report['load_average'][1]:.2f} "
        f"after, on {report['cpus']} CPUs"
    )
    return "\n".join(lines)
