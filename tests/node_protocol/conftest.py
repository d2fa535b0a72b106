"""The client's tests run on asyncio's own loop and on uvloop (the router's and the agent's):
the two write, and report closes, at different moments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop

from node_protocol.upstream import UpstreamPool


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    made = UpstreamPool()
    yield made
    made.close()
    await asyncio.sleep(0)  # let the transports finish closing
