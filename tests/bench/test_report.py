"""Report writing: report.json's contract, the Markdown tables and the self-contained HTML."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.loadrun import LocustResult
from bench.metrics import Dist, run_stats
from bench.outcome import RunOutcome
from bench.overhead.analysis import OverheadResult, overhead_targets, throughput_ratios
from bench.report import write_overhead_reports, write_reports
from bench.report.svg import nice_ticks
from bench.scenario import load_scenario
from bench.targets import judge, target_for
from tests.bench.records_factory import stream


def _outcome(tpot_70b: float = 0.1) -> RunOutcome:
    scenario = load_scenario("ci")
    recs = [stream(i * 0.5, model="llama3.1:8b", tpot=0.02, node="gpu-box-1") for i in range(60)]
    recs += [
        stream(i * 0.5, model="llama2:13b", tpot=0.03, node=f"gpu-box-{1 + i % 2}")
        for i in range(60)
    ]
    recs += [
        stream(i * 1.0, model="llama3.1:70b", tpot=tpot_70b, node="gpu-box-3") for i in range(30)
    ]
    stats = run_stats(recs, warmup_s=5.0, duration_s=25.0, slo=scenario.slo)
    verdicts = [judge(m, stats.models[m], target_for(m)) for m in scenario.models]
    return RunOutcome(
        scenario=scenario,
        target="http://127.0.0.1:1/inference-cluster/v1",
        cluster="demo",
        started="2026-01-01T00:00:00+00:00",
        stats=stats,
        verdicts=verdicts,
        records=recs,
        locust=LocustResult(returncodes=(0,), elapsed_s=25.0, cpu_percent=(20.0,)),
        share={"llama2:13b": {"gpu-box-1": 0.5, "gpu-box-2": 0.5}},
    )


def _overhead() -> OverheadResult:
    rounds = {
        "short": {"direct": [100.0, 110.0], "router": [50.0, 60.0], "bare proxy": [80.0, 90.0]}
    }
    dist = Dist.of([1.0, 2.0])
    result = OverheadResult(
        generator="wrk",
        latency_ms={p: {"ttfb": dist, "ttft": dist, "e2e": dist} for p in rounds["short"]},
        added_ms={"router": {"ttfb": {"p50": 0.4, "p99": 1.0}}},
        router_header_ms=dist,
        latency_errors={},
        throughput_rps=rounds,
        ratios=throughput_ratios(rounds),
        generator_cpu_percent={},
    )
    result.targets.extend(overhead_targets(result))
    return result


class TestRunReport:
    """``bench run`` writes report.json, report.md and report.html."""

    def test_json_contract(self, tmp_path: Path) -> None:
        """Per model decode p50, floor and pass; overall errors, calibration_ok, overhead."""
        paths = write_reports(_outcome(), tmp_path)
        doc = orjson.loads(paths["json"].read_bytes())
        model = doc["models"]["llama3.1:8b"]
        assert model["decode_tok_s_p50"] == pytest.approx(50.0)
        assert model["target_min_tok_s"] == 40.0
        assert model["pass"] is True
        assert doc["errors"]["count"] == 0
        assert doc["calibration_ok"] is None
        assert doc["overhead"]["router_header_ms"]["p50"] == 0.5
        assert doc["pass"] is True

    def test_missed_floor_fails_the_run(self, tmp_path: Path) -> None:
        """A 70B stream at 4 tok/s (floor 5) fails its model and the run."""
        outcome = _outcome(tpot_70b=0.25)
        doc = orjson.loads(write_reports(outcome, tmp_path)["json"].read_bytes())
        assert doc["models"]["llama3.1:70b"]["pass"] is False
        assert doc["pass"] is False
        assert not outcome.passed
        assert "FAIL" in (tmp_path / "report.md").read_text()

    def test_html_is_self_contained_with_the_four_plots(self, tmp_path: Path) -> None:
        """TTFT and TPOT distributions, tokens/s over time and node share, inline, no URLs."""
        html = write_reports(_outcome(), tmp_path)["html"].read_text()
        assert html.count("<svg") == 4
        for title in (
            "TTFT distribution per model",
            "TPOT distribution per model",
            "Output tokens/s over time",
            "Share of requests per node",
        ):
            assert title in html
        assert "<script src" not in html
        assert "<link" not in html

    def test_overhead_sections(self, tmp_path: Path) -> None:
        """The overhead report holds the ratios, the targets and a chart per workload."""
        paths = write_overhead_reports(_overhead(), tmp_path)
        md = paths["md"].read_text()
        assert "short router/bare proxy" in md
        assert "0.646" in md  # median of 50/80 and 60/90
        assert "## Targets" in md
        assert paths["html"].read_text().count("<svg") == 2


class TestTicks:
    """Axis ticks cover the data."""

    def test_ticks_cover_the_range(self) -> None:
        """The last tick is at or above the maximum."""
        ticks = nice_ticks(0.0, 287.0)
        assert ticks[0] == 0.0
        assert ticks[-1] >= 287.0
        assert nice_ticks(3.0, 3.0)[-1] >= 3.0


class TestOverheadTargets:
    """The issue's targets are judged from the same run's ratios."""

    def test_targets_without_nginx(self) -> None:
        """Without nginx the stream target is not measured (neither met nor missed)."""
        targets = {t.name: t for t in _overhead().targets}
        ttfb = targets["added p50 TTFB, router (static node), concurrency 1 [ms]"]
        short = targets["short non-streamed, 32 connections: router / bare proxy"]
        streams = targets["16-chunk streams, 32 connections: router / nginx"]
        assert ttfb.met is True
        assert short.met is False  # 0.646 < 0.9
        assert streams.met is None
        assert streams.note == "nginx not installed"
