"""Micro-benchmarks (pytest-benchmark): ``pytest bench/micro --benchmark-min-rounds=20``.

Each benchmark holds its median to a budget: the target, when run directly. The CI gate
(``python -m bench ci``) sets ``MICRO_BUDGET_SLACK`` (1.5): the same virtual machine has run the
same code at half the speed on another day, and the gate is there to catch a regression of the
code, not of the machine.
"""

from __future__ import annotations

import os
from typing import Any

SLACK_ENV = "MICRO_BUDGET_SLACK"


def within_budget(benchmark: Any, budget_s: float) -> None:
    """The benchmark's median is within ``budget_s`` (times the gate's slack, if set)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        slack = float(os.environ.get(SLACK_ENV, "1"))
        assert stats.stats.median <= budget_s * slack
