"""Shared fixtures: a real router on port 0, and a client session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.app import RunningRouter, serve
from router.settings import RouterSettings, Timeouts


def router_settings(**overrides: object) -> RouterSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "report_interval_s": 0.2,
        "health_interval_s": 0.5,
        "shutdown_grace_s": 2.0,
        "max_body_bytes": 64 * 1024,
        "warmup_s": 0.0,
        "timeouts": Timeouts(connect_s=1.0, first_byte_s=3.0, idle_s=3.0, total_s=30.0),
    }
    base.update(overrides)
    return RouterSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def router() -> AsyncIterator[RunningRouter]:
    async with serve(router_settings()) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s
