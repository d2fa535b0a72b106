"""deploy/ tests: the ``slow`` marker (tests that build a clean venv, ~30 s)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: installs the project into a fresh venv (~30 s); -m 'not slow' skips"
    )
