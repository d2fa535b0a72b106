"""Fixtures of the conformance suite: one fleet per engine, shared by every test of it.

``fleet`` is parametrized indirectly (see ``engines.engines``), session-scoped: pytest groups
the tests by engine, so each fleet starts once and is stopped before the next one starts. Every
async test and fixture here runs on the session's event loop (the fleet's processes belong to it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bench.llamacpp.paths import NotBuiltError

from .engines import ENGINES
from .fleet import Fleet, launch


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    spec = ENGINES[request.param]
    folder = tmp_path_factory.mktemp(spec.name)
    try:
        async with launch(spec, folder) as running:
            yield running
    except NotBuiltError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
