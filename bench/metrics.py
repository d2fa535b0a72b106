"""The benchmark's numbers, computed with numpy from raw request records.

Definitions: TTFB = headers - send; TTFT = first token - send;
E2E = last token - send; TPOT = (E2E - TTFT) / (N - 1) for N >= 2; decode rate = 1 / TPOT;
ITL = gaps between token chunks; output tokens/s = tokens whose chunk times fall in the steady
window / window length. A request belongs to the window when it was *sent* inside it; latency
figures use its successful requests, errors count against goodput.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.records import ClientRecord
from bench.scenario import Slo


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution's summary: p50, p90, p99, mean and how many values."""

    n: int
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: Iterable[float], scale: float = 1.0) -> Dist:
        arr = np.asarray(list(values), dtype=float) * scale
        if arr.size == 0:
            return cls(n=0)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(
            n=int(arr.size), p50=float(p50), p90=float(p90), p99=float(p99), mean=float(arr.mean())
        )


@dataclass(frozen=True, slots=True)
class Window:
    """The steady-state window, in wall-clock seconds."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return max(1e-9, self.end - self.start)

    @classmethod
    def steady(cls, records: Sequence[ClientRecord], warmup_s: float, duration_s: float) -> Window:
        """From ``warmup_s`` after the first request to ``duration_s`` after it."""
        if not records:
            return cls(0.0, 1e-9)
        t0 = min(r.wall_send for r in records)
        return cls(t0 + warmup_s, t0 + duration_s)


def wall(record: ClientRecord, t: float) -> float:
    """A ``perf_counter`` time of ``record`` on the wall clock."""
    return record.wall_send + (t - record.t_send)


@dataclass(frozen=True, slots=True)
class GroupStats:
    """The figures of one model (or of the whole run) over the steady window, in ms / tok/s."""

    requests: int
    ok: int
    errors: dict[str, int]
    ttfb_ms: Dist
    ttft_ms: Dist
    e2e_ms: Dist
    tpot_ms: Dist
    decode_tok_s: Dist
    itl_ms: Dist
    tokens_per_chunk: float | None
    output_tok_s: float
    decoding_streams: float
    goodput_rps: float
    nodes: dict[str, int]
    tokens_from: dict[str, int]
    dispatch_lag_ms: Dist

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _overlap(a: float, b: float, window: Window) -> float:
    return max(0.0, min(b, window.end) - max(a, window.start))


def _meets(record: ClientRecord, slo: Slo) -> bool:
    ttft, tpot = record.ttft_s, record.tpot_s
    if record.error is not None or ttft is None or record.t_last_token is None:
        return False
    e2e = record.t_last_token - record.t_send
    return ttft <= slo.ttft_s and e2e <= slo.e2e_s and (tpot is None or tpot <= slo.tpot_s)


def group_stats(records: Sequence[ClientRecord], window: Window, slo: Slo) -> GroupStats:
    """Every figure for one set of records (all sent by whatever ``records`` holds)."""
    sent = [r for r in records if window.start <= r.wall_send <= window.end]
    ok = [r for r in sent if r.error is None]
    tokens_in_window = 0.0
    decoding = 0.0
    for r in records:
        if r.token_times and r.t_first_token is not None and r.t_last_token is not None:
            times = r.wall_send + np.asarray(r.token_times)
            inside = int(np.count_nonzero((times >= window.start) & (times <= window.end)))
            tokens_in_window += inside * r.tokens / len(r.token_times)
            decoding += _overlap(wall(r, r.t_first_token), wall(r, r.t_last_token), window)
    tpots = [t for r in ok if (t := r.tpot_s) is not None and t > 0]
    itl = [g for r in ok for g in np.diff(r.token_times)]
    chunks = sum(len(r.token_times) for r in ok)
    return GroupStats(
        requests=len(sent),
        ok=len(ok),
        errors=dict(Counter(r.error for r in sent if r.error is not None)),
        ttfb_ms=Dist.of((r.t_headers - r.t_send for r in ok if r.t_headers), 1000),
        ttft_ms=Dist.of((t for r in ok if (t := r.ttft_s) is not None), 1000),
        e2e_ms=Dist.of((r.t_last_token - r.t_send for r in ok if r.t_last_token), 1000),
        tpot_ms=Dist.of(tpots, 1000),
        decode_tok_s=Dist.of(1.0 / t for t in tpots),
        itl_ms=Dist.of(itl, 1000),
        tokens_per_chunk=sum(r.tokens for r in ok) / chunks if chunks else None,
        output_tok_s=tokens_in_window / window.length,
        decoding_streams=decoding / window.length,
        goodput_rps=sum(_meets(r, slo) for r in sent) / window.length,
        nodes=dict(Counter(r.node or "?" for r in ok)),
        tokens_from=dict(Counter(r.tokens_from for r in ok)),
        dispatch_lag_ms=Dist.of(
            (r.dispatch_lag_s for r in sent if r.dispatch_lag_s is not None), 1000
        ),
    )


@dataclass(frozen=True, slots=True)
class RunStats:
    """Per-model and overall figures, plus what the plots need."""

    window: Window
    overall: GroupStats
    models: dict[str, GroupStats]
    series: dict[str, list[float]] = field(default_factory=dict)  # tokens/s per 1 s bin
    series_start: float = 0.0


def tokens_per_second_series(
    records: Sequence[ClientRecord], start: float, end: float, bin_s: float = 1.0
) -> list[float]:
    """Output tokens per second in consecutive bins from ``start`` to ``end`` (wall clock)."""
    edges = np.arange(start, end + bin_s, bin_s)
    if edges.size < 2:
        return []
    counts = np.zeros(edges.size - 1)
    for r in records:
        if r.token_times:
            times = r.wall_send + np.asarray(r.token_times)
            hist, _ = np.histogram(times, bins=edges)
            counts += hist * (r.tokens / len(r.token_times))
    return [float(c) / bin_s for c in counts]


def run_stats(
    records: Sequence[ClientRecord], warmup_s: float, duration_s: float, slo: Slo
) -> RunStats:
    window = Window.steady(records, warmup_s, duration_s)
    by_model: dict[str, list[ClientRecord]] = {}
    for r in records:
        by_model.setdefault(r.model, []).append(r)
    start = window.start - warmup_s
    end = max((wall(r, r.t_done) for r in records if r.t_done), default=window.end)
    return RunStats(
        window=window,
        overall=group_stats(records, window, slo),
        models={m: group_stats(rs, window, slo) for m, rs in sorted(by_model.items())},
        series={m: tokens_per_second_series(rs, start, end) for m, rs in sorted(by_model.items())},
        series_start=start,
    )


def load_records(folder: Path) -> list[ClientRecord]:
    """Every record in ``folder/records-*.jsonl`` (one file per load-generating process)."""
    out: list[ClientRecord] = []
    for path in sorted(folder.glob("records-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(ClientRecord.from_dict(orjson.loads(line)))
    return out
