"""Summaries of a run, with the names of ``bench/metrics.py``.

Latencies are over the steady window (requests after the first ``WARMUP`` share, by arrival);
TTFT includes the wait in the router's queue. Throughput is the output tokens emitted inside
the window (first to last arrival; a stream's tokens flow evenly from its first token to its
end) over its length; goodput counts the requests that met every SLO (TTFT, TPOT) per second
of the same window (a rejected request meets none). The cache hit share is the prompt tokens
found in the engines' prompt caches over all prompt tokens of the window's served requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from bench.sim.run import Outcome

WARMUP = 0.1
SLO_TTFT_S = 5.0
SLO_TPOT_S = 0.25
COLUMNS = (
    "ttft_p50_s",
    "ttft_p99_s",
    "e2e_p99_s",
    "throughput_tok_s",
    "goodput_rps",
    "cold_loads",
    "avoidable_cold_loads",
    "rejected",
    "cache_hit_share",
)


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def summarize(o: Outcome, tenant: int | None = None) -> dict[str, float]:
    """The JSON figures of one policy's run (one tenant's requests only, if given)."""
    reqs = o.requests
    n = len(reqs)
    mine = np.full(n, True) if tenant is None else reqs.tenant == tenant
    window = (_arrival_rank(reqs.arrival) >= int(n * WARMUP)) & mine
    done = window & (o.status == 0)
    ttft, e2e, out = o.ttft[done], o.e2e[done], reqs.output[done]
    arrival = reqs.arrival[done]
    span = float(arrival.max() - arrival.min()) if e2e.size else float("nan")
    first, last = arrival + ttft, arrival + e2e  # tokens flow evenly in between
    inside = np.clip(np.minimum(last, arrival.max()) - np.maximum(first, arrival.min()), 0, None)
    emitted = out * inside / np.maximum(last - first, 1e-9)
    tpot = np.where(out > 1, (e2e - ttft) / np.maximum(out - 1, 1), 0.0)
    good = int(((ttft <= SLO_TTFT_S) & (tpot <= SLO_TPOT_S)).sum())
    return {
        "ttft_p50_s": round(_pct(ttft, 50), 4),
        "ttft_p99_s": round(_pct(ttft, 99), 4),
        "e2e_p99_s": round(_pct(e2e, 99), 4),
        "throughput_tok_s": round(float(emitted.sum()) / span, 2),
        "goodput_rps": round(good / span, 4),
        "cold_loads": o.cold_loads,
        "avoidable_cold_loads": o.avoidable_cold_loads,
        "rejected": int(((o.status != 0) & mine).sum()),
        "cache_hit_share": round(float(o.cached[done].sum() / max(reqs.prompt[done].sum(), 1)), 4),
        "requests": int(window.sum()),
        "busy_answers": o.busy_answers,
        "wall_s": round(o.wall_s, 2),
    }


def _arrival_rank(arrival: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Each request's place in arrival order (requests are drawn in that order, except the
    conversations' later turns, whose arrivals the run decides)."""
    if arrival.size < 2 or bool((arrival[1:] >= arrival[:-1]).all()):
        return np.arange(arrival.size)
    rank = np.empty(arrival.size, dtype=np.intp)
    rank[np.argsort(arrival, kind="stable")] = np.arange(arrival.size)
    return rank


def table(policies: Mapping[str, Mapping[str, float]], columns: Sequence[str] = COLUMNS) -> str:
    """A fixed-width text table, one row per policy."""
    heads = ["policy", *columns]
    rows = [[name, *(_fmt(stats.get(c)) for c in columns)] for name, stats in policies.items()]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
