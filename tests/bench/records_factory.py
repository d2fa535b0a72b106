"""Synthetic request records for the metric, report and calibration tests."""

from __future__ import annotations

from bench.records import ClientRecord

T0 = 1000.0  # perf_counter origin of every synthetic record
WALL0 = 1_700_000_000.0


def stream(
    send: float,
    *,
    model: str = "m",
    ttft: float = 0.1,
    tpot: float = 0.02,
    tokens: int = 11,
    node: str | None = "n1",
    error: str | None = None,
    ttfb: float = 0.01,
) -> ClientRecord:
    """A request sent ``send`` seconds after the origin, with one token per chunk."""
    t_send = T0 + send
    times = [round(ttft + i * tpot, 6) for i in range(tokens)]
    return ClientRecord(
        model=model,
        entry=f"chat {model}",
        max_tokens=tokens,
        wall_send=WALL0 + send,
        t_send=t_send,
        t_headers=t_send + ttfb,
        t_first_event=t_send + ttft,
        t_first_token=t_send + ttft if tokens else None,
        t_last_token=t_send + times[-1] if tokens else None,
        t_done=t_send + (times[-1] if tokens else ttft) + 0.001,
        token_times=times,
        prompt_tokens=10,
        completion_tokens=tokens,
        status=200 if error is None else 500,
        error=error,
        node=node,
        router_overhead_ms=0.5,
    )
