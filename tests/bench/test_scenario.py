"""Scenario files: the shipped ones load, bad ones fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenario import CAPACITY_FILE, ScenarioError, load_scenario
from bench.targets import load_targets, target_for


class TestScenario:
    """Scenarios are validated when loaded."""

    @pytest.mark.parametrize("name", ["default", "ci", "open"])
    def test_shipped_scenarios_load_and_have_targets(self, name: str) -> None:
        """Every model of the shipped mixes has a capacity target and the demo cluster."""
        scenario = load_scenario(name)
        assert scenario.cluster is not None
        assert scenario.cluster.is_file()
        assert all(target_for(m) is not None for m in scenario.models)

    def test_the_real_engine_scenario_is_judged_by_its_own_capacity_spec(self) -> None:
        """The llama-server scenario names a capacity spec the emulator never reads: its model
        has a target there and none in the emulator's table."""
        scenario = load_scenario("llamacpp-tiny")
        assert scenario.cluster is None
        assert scenario.capacity.name == "capacity-tiny.toml"
        assert scenario.capacity.is_file()
        assert all(target_for(m, capacity=scenario.capacity) is not None for m in scenario.models)
        _, emulated_models = load_targets(CAPACITY_FILE)
        assert not set(scenario.models) & set(emulated_models)

    def test_a_missing_capacity_spec_is_refused(self, tmp_path: Path) -> None:
        """A scenario naming a capacity spec that does not exist fails when loaded."""
        path = tmp_path / "s.toml"
        path.write_text('capacity = "no-such-spec"\n[[mix]]\nmodel = "m"\n')
        with pytest.raises(ScenarioError, match="no-such-spec"):
            load_scenario(str(path))

    def test_open_loop_needs_a_rate(self, tmp_path: Path) -> None:
        """An open loop without a rate is refused."""
        path = tmp_path / "s.toml"
        path.write_text('[load]\nmode = "open"\n[[mix]]\nmodel = "m"\n')
        with pytest.raises(ScenarioError, match="rate"):
            load_scenario(str(path))

    def test_lengths_are_ranges(self, tmp_path: Path) -> None:
        """``max_tokens`` takes an integer or a ``[low, high]`` pair."""
        path = tmp_path / "s.toml"
        path.write_text('[[mix]]\nmodel = "m"\nmax_tokens = [8, 4]\n')
        with pytest.raises(ScenarioError, match="low <= high"):
            load_scenario(str(path))

    def test_unknown_scenario_lists_known_ones(self) -> None:
        """A missing name says which scenarios exist."""
        with pytest.raises(ScenarioError, match=r"known: .*default"):
            load_scenario("nope")
