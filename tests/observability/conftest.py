"""The outside tools these tests drive (Prometheus, Chromium), found or reported missing.

Locally a missing tool skips the test that needs it, with the reason. In CI (``CI=true``) it
fails instead: ``.ci/run`` installs every one of them, so a skip there would hide a broken check.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI") == "true"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason}; CI=true, so this must not be skipped", pytrace=False)
    pytest.skip(reason)


def _tool(*names: str, hint: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    unavailable(f"{' or '.join(names)} is not on PATH ({hint})")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _tool("prometheus", hint="Debian: apt-get install prometheus")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _tool("promtool", hint="Debian: apt-get install prometheus")


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    if importlib.util.find_spec("playwright") is None:
        unavailable("the playwright Python package is not installed (pip install playwright)")
    return _tool("chromium", "chromium-browser", hint="Debian: apt-get install chromium")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
