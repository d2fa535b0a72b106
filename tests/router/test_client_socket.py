"""The router's one module of aiohttp internals fails loudly when aiohttp changes underneath."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest

from router.client_socket import (
    TESTED_RANGE,
    UnsupportedAiohttp,
    check_aiohttp,
    missing_internals,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_aiohttp_internal_the_router_uses_is_there() -> None:
    """The private names and behaviours router.client_socket relies on exist, with the
    signatures it calls them with."""
    assert missing_internals() == []


def test_the_installed_aiohttp_is_in_the_tested_range() -> None:
    """The installed aiohttp passes the module's own check."""
    check_aiohttp(aiohttp.__version__)


def test_pyproject_pins_the_tested_range() -> None:
    """pyproject.toml pins aiohttp to exactly the range the module was tested with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in project["project"]["dependencies"] if d.startswith("aiohttp")]
    assert pins == [TESTED_RANGE]


@pytest.mark.parametrize("version", ["3.13.2", "3.15.0", "4.0.0a1"])
def test_another_aiohttp_is_refused_by_name(version: str) -> None:
    """An aiohttp outside the range is refused with an error naming the tested range."""
    with pytest.raises(UnsupportedAiohttp, match=rf"tested with {TESTED_RANGE}.*{version}"):
        check_aiohttp(version)


def test_a_changed_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """When aiohttp stops writing a stream's headers on prepare, the check names it."""
    monkeypatch.setattr(aiohttp.web.StreamResponse, "_send_headers_immediately", False)
    assert missing_internals() == ["web.StreamResponse._send_headers_immediately is True"]
    with pytest.raises(UnsupportedAiohttp, match="_send_headers_immediately"):
        check_aiohttp(aiohttp.__version__)
