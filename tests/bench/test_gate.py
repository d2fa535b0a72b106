"""The regression gate: ratio thresholds, the rerun rule, micro-benchmarks measured again."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ci import _micro_run, measure_again
from bench.gate import Attempt, GateCheck, GateSpec, Threshold, gate_markdown, run_gate
from bench.scenario import SCENARIO_DIR


def _attempt(passed: bool) -> Attempt:
    return Attempt(checks=[GateCheck("ratio", passed, "x")])


class TestThreshold:
    """A threshold bounds one ratio measured in the same run."""

    def test_min_and_max_bounds(self) -> None:
        """``min`` passes at or above, ``max`` at or below."""
        ratios = {"a/b": 0.5}
        assert Threshold("a/b", min=0.5).check(ratios).passed
        assert not Threshold("a/b", min=0.6).check(ratios).passed
        assert Threshold("a/b", max=0.5).check(ratios).passed
        assert not Threshold("a/b", max=0.4).check(ratios).passed

    def test_missing_ratio_fails(self) -> None:
        """A ratio the run did not measure fails rather than passing silently."""
        check = Threshold("nginx/x", min=0.1).check({})
        assert not check.passed
        assert "not measured" in check.detail

    def test_spec_from_toml(self, tmp_path: Path) -> None:
        """Bounds come from ``[gate.ratios]``; each needs exactly one of min / max."""
        path = tmp_path / "s.toml"
        path.write_text('[gate]\nreruns = 2\n[gate.ratios]\n"a/b" = { min = 0.3 }\n')
        spec = GateSpec.from_toml(path)
        assert spec.reruns == 2
        assert spec.thresholds == (Threshold("a/b", min=0.3),)
        path.write_text('[gate.ratios]\n"a/b" = { min = 0.3, max = 2.0 }\n')
        with pytest.raises(ValueError, match="exactly one"):
            GateSpec.from_toml(path)

    def test_shipped_ci_scenario_has_valid_bounds(self) -> None:
        """The ci scenario's gate table parses; a failed attempt is run again twice at most."""
        spec = GateSpec.from_toml(SCENARIO_DIR / "ci.toml")
        assert spec.thresholds
        assert spec.reruns == 2


class TestRerun:
    """A failed attempt is rerun once; the gate fails only when the rerun fails too."""

    async def test_pass_first_time_runs_once(self) -> None:
        """A passing first attempt is final."""
        calls: list[int] = []

        async def attempt(n: int) -> Attempt:
            calls.append(n)
            return _attempt(True)

        result = await run_gate(attempt, reruns=1)
        assert result.passed
        assert calls == [1]

    async def test_flake_is_forgiven_by_the_rerun(self) -> None:
        """A failure followed by a pass passes."""
        outcomes = iter([False, True])

        async def attempt(n: int) -> Attempt:
            return _attempt(next(outcomes))

        result = await run_gate(attempt, reruns=1)
        assert result.passed
        assert len(result.attempts) == 2

    async def test_two_failures_fail(self) -> None:
        """Two failures in a row fail the gate, and the report says so."""

        async def attempt(n: int) -> Attempt:
            return _attempt(False)

        result = await run_gate(attempt, reruns=1)
        assert not result.passed
        assert len(result.attempts) == 2
        assert result.to_dict()["pass"] is False
        assert gate_markdown(result).startswith("# Performance gate: FAIL")


class TestMicroBudgetsMeasuredAgain:
    """A micro-benchmark over its budget is measured again in fresh processes (real pytest
    runs here, of a test that fails its first runs as a slow stretch of the machine would)."""

    @staticmethod
    def _slow_at_first(folder: Path, slow_runs: int) -> str:
        counter = folder / "runs"
        test = folder / "test_slow_at_first.py"
        test.write_text(
            "from pathlib import Path\n"
            f"COUNTER = Path({str(counter)!r})\n"
            "def test_within_budget() -> None:\n"
            "    runs = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1\n"
            "    COUNTER.write_text(str(runs))\n"
            f"    assert runs > {slow_runs}\n"
        )
        return f"{test}::test_within_budget"

    @pytest.mark.parametrize(("slow_runs", "code", "runs"), [(2, 0, 3), (3, 1, 3)])
    async def test_passes_once_within_budget_and_fails_when_over_every_time(
        self, tmp_path: Path, slow_runs: int, code: int, runs: int
    ) -> None:
        """Over twice then within: passes on the third run; over three times: fails, each run
        named in the detail."""
        failed = [self._slow_at_first(tmp_path, slow_runs)]
        argv = ["-m", "pytest", "bench/micro", "-q", "-rf", "-p", "no:cacheprovider",
                f"--benchmark-json={tmp_path / 'micro.json'}"]  # fmt: skip
        result, detail = await measure_again(_micro_run, argv, failed, tmp_path)
        assert result == code
        assert (tmp_path / "runs").read_text() == str(runs)
        assert detail.count("; again (") == runs
