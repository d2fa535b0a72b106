"""The router under real load (an emulated cluster, each part its own process on port 0) orders
routing policies by p99 TTFT as the simulator does on the same fleet and requests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.policy_check import run_check
from bench.policy_check.fleet import CheckSettings
from bench.policy_check.verdict import Row, compare, render

POLICIES = ("least_loaded", "round_robin", "random")


@pytest.mark.slow
class TestPolicyOrdering:
    """A short run of ``python -m bench policies``: real and simulated rankings agree."""

    async def test_real_router_ranks_policies_as_the_simulator(self, tmp_path: Path) -> None:
        """least_loaded beats round_robin by far in both, and every pair the simulator separates
        by more than the tie ratio is ordered the same way by the real router, with no errors."""
        settings = CheckSettings(policies=POLICIES, duration_s=6.0, load=0.85)
        started = time.perf_counter()
        rep = await run_check(settings, tmp_path)
        print(render(rep), f"\n({time.perf_counter() - started:.1f} s)")
        rows = rep["policies"]
        assert rep["errors"] == 0
        ll, rr = rows["least_loaded"], rows["round_robin"]
        assert ll["sim_p99"] * settings.tie_ratio <= rr["sim_p99"]
        assert ll["real_p99"] * settings.tie_ratio <= rr["real_p99"]
        compared = {(p["better"], p["worse"]): p for p in rep["compared"]}
        assert ("least_loaded", "round_robin") in compared
        assert len(compared) + len(rep["ties"]) == len(POLICIES) * (len(POLICIES) - 1) // 2
        for (better, worse), pair in compared.items():
            assert rows[better]["real_p99"] < rows[worse]["real_p99"], pair
            assert rows[better]["sim_rank"] < rows[worse]["sim_rank"]
            assert rows[better]["real_rank"] < rows[worse]["real_rank"]
        assert rep["match"]
        assert rep["passed"]
        assert (tmp_path / "policies.json").is_file()


def _row(policy: str, real_p99: float, sim_p99: float) -> Row:
    return Row(policy, 0.0, real_p99, 0.0, sim_p99, 100, errors=0, lag_p99_s=0.0, served={})


class TestCompare:
    """Which pairs count, and when the real ordering disagrees."""

    def test_a_reversed_pair_disagrees_and_close_pairs_are_ties(self) -> None:
        """A pair the simulator separates but the real run reverses is a disagreement; a pair
        within the tie ratio in the simulator is a tie, whatever the real run says."""
        rows = [_row("least_loaded", 9.0, 0.5), _row("round_robin", 1.0, 10.0)]
        rows.append(_row("random", 0.5, 12.0))
        pairs, ties = compare(rows, tie_ratio=1.5)
        assert ties == [("round_robin", "random")]
        assert {(p.better, p.worse): p.agrees for p in pairs} == {
            ("least_loaded", "round_robin"): False,
            ("least_loaded", "random"): False,
        }
        agreeing, _ = compare([rows[0], _row("random", 20.0, 12.0)], tie_ratio=1.5)
        assert [p.agrees for p in agreeing] == [True]
