"""The open-loop pacer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bench.pacing import Pacer


class TestPacer:
    """Arrivals are a Poisson process at the asked rate, from the first call."""

    def test_gaps_are_exponential_at_the_rate(self) -> None:
        """Mean gap ~ 1/rate and the coefficient of variation ~ 1 (exponential)."""
        pacer = Pacer(50.0, random.Random(3), clock=lambda: 100.0)
        due = np.array([pacer.take() for _ in range(20_000)])
        gaps = np.diff(due)
        assert due[0] == 100.0
        assert gaps.mean() == pytest.approx(0.02, rel=0.03)
        assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)

    def test_rate_must_be_positive(self) -> None:
        """A zero rate is refused."""
        with pytest.raises(ValueError, match="rate"):
            Pacer(0.0, random.Random(1))
