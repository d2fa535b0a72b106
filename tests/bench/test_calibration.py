"""The calibration verdict: recovering a known node's TTFT and decode rate within tolerance."""

from __future__ import annotations

import pytest

from bench.calibration import CalibrationResult, expected_decode, judge_path
from bench.metrics import Window, group_stats
from bench.scenario import Calibration, Slo
from tests.bench.records_factory import WALL0, stream

CAL = Calibration(model="llama3.1:8b", tok_s=50.0, ttft_ms=200.0, tolerance=0.10)


def _judge(ttft: float, tpot: float, expected_tok_s: float = 50.0) -> bool:
    recs = [stream(float(i), ttft=ttft, tpot=tpot) for i in range(5)]
    stats = group_stats(recs, Window(WALL0, WALL0 + 10), Slo())
    return judge_path("direct", stats, CAL, expected_tok_s, cpu=10.0).ok


class TestCalibration:
    """A path is calibrated when both figures land within the tolerance."""

    def test_expected_decode_applies_the_class_batch_decay(self) -> None:
        """With n streams the node decodes tok_s / (1 + decay (n - 1)) per stream (7B: 0.06)."""
        assert expected_decode(CAL, 1) == pytest.approx(50.0)
        assert expected_decode(CAL, 4) == pytest.approx(50.0 / 1.18)

    def test_within_tolerance_passes(self) -> None:
        """5% off on TTFT and decode rate is within 10%."""
        assert _judge(ttft=0.21, tpot=1 / 47.5)

    def test_slow_ttft_fails(self) -> None:
        """A TTFT 15% over the set value is a miss."""
        assert not _judge(ttft=0.23, tpot=0.02)

    def test_slow_decode_fails(self) -> None:
        """A decode rate 20% under the set value is a miss."""
        assert not _judge(ttft=0.2, tpot=1 / 40.0)

    def test_result_needs_every_path(self) -> None:
        """The run is calibrated only when every path is, and never with no path."""
        recs = [stream(float(i), ttft=0.2, tpot=0.02) for i in range(3)]
        stats = group_stats(recs, Window(WALL0, WALL0 + 10), Slo())
        good = judge_path("direct", stats, CAL, 50.0, None)
        bad = judge_path("router", stats, CAL, 30.0, None)
        assert CalibrationResult(200.0, 50.0, 0.1, 1, (good,)).ok
        assert not CalibrationResult(200.0, 50.0, 0.1, 1, (good, bad)).ok
        assert not CalibrationResult(200.0, 50.0, 0.1, 1, ()).ok
