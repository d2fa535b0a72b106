"""The numpy figures: TPOT, the steady window, tokens/s, goodput, errors and distributions."""

from __future__ import annotations

import pytest

from bench.metrics import Dist, Window, group_stats, run_stats, tokens_per_second_series
from bench.records import HTTP_5XX
from bench.scenario import Slo
from tests.bench.records_factory import WALL0, stream


class TestDefinitions:
    """Per-request figures follow the project's definitions."""

    def test_tpot_is_decode_time_over_tokens_minus_one(self) -> None:
        """TPOT = (E2E - TTFT) / (N - 1); the decode rate is its inverse."""
        rec = stream(0.0, ttft=0.2, tpot=0.025, tokens=9)
        assert rec.tpot_s == pytest.approx(0.025)
        assert rec.ttft_s == pytest.approx(0.2)

    def test_tpot_needs_two_tokens(self) -> None:
        """A single-token answer has no TPOT."""
        assert stream(0.0, tokens=1).tpot_s is None

    def test_dist_percentiles(self) -> None:
        """Percentiles interpolate linearly, as numpy does."""
        d = Dist.of(range(1, 101))
        assert (d.n, d.p50, d.mean) == (100, 50.5, 50.5)
        assert d.p99 == pytest.approx(99.01)
        assert Dist.of([]).p50 is None


class TestSteadyWindow:
    """Only requests sent inside the steady window count."""

    def test_window_runs_from_warmup_to_duration(self) -> None:
        """The window is measured from the first request's send time."""
        recs = [stream(0.0), stream(3.0), stream(12.0)]
        window = Window.steady(recs, warmup_s=2.0, duration_s=10.0)
        assert (window.start, window.end) == (WALL0 + 2.0, WALL0 + 10.0)
        stats = group_stats(recs, window, Slo())
        assert stats.requests == 1

    def test_output_tokens_per_second_counts_tokens_inside_the_window(self) -> None:
        """A stream crossing the window edge contributes only its tokens inside."""
        # 11 tokens at 0.1 s + 0.1 k, k = 0..10: times 0.1 .. 1.1 s after a send at 0.
        rec = stream(0.0, ttft=0.1, tpot=0.1, tokens=11)
        window = Window(WALL0 + 0.5, WALL0 + 1.0)
        stats = group_stats([rec], window, Slo())
        # tokens at 0.5 .. 1.0 (6 of them) in a 0.5 s window
        assert stats.output_tok_s == pytest.approx(12.0)
        assert stats.decoding_streams == pytest.approx(1.0)

    def test_errors_count_against_goodput(self) -> None:
        """Errors are classed and excluded from latency; goodput counts SLO-meeting requests."""
        recs = [stream(1.0), stream(1.5, error=HTTP_5XX, tokens=0), stream(2.0, ttft=5.0)]
        stats = group_stats(recs, Window(WALL0, WALL0 + 10.0), Slo(ttft_s=1.0))
        assert stats.requests == 3
        assert stats.ok == 2
        assert stats.errors == {HTTP_5XX: 1}
        assert stats.goodput_rps == pytest.approx(0.1)
        assert stats.ttft_ms.n == 2

    def test_run_stats_split_by_model_and_series(self) -> None:
        """Run figures are per model and overall; the series bins tokens per second."""
        recs = [stream(float(i), model="a" if i % 2 else "b") for i in range(10)]
        stats = run_stats(recs, warmup_s=2.0, duration_s=8.0, slo=Slo())
        assert set(stats.models) == {"a", "b"}
        assert stats.overall.requests == stats.models["a"].requests + stats.models["b"].requests
        series = tokens_per_second_series(recs, WALL0, WALL0 + 10.0)
        assert sum(series) == pytest.approx(110.0)
        assert stats.overall.nodes == {"n1": stats.overall.ok}
