"""An agent with the registration token joins a secured router; one without it cannot."""

from __future__ import annotations

import asyncio

import aiohttp

from bench.emulator.app import serve as serve_emulator
from node_agent.app import serve as serve_agent
from router.app import serve as serve_router
from router.auth import digest
from tests.conftest import router_settings
from tests.e2e.conftest import GROUP, NODES, agent_settings

TOKEN = "registration-secret-1"
ADMIN = "admin-secret-1"


async def _names(session: aiohttp.ClientSession, router_url: str) -> set[str]:
    url = f"{router_url}/api/server-groups/{GROUP}/nodes"
    async with session.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        return {n["name"] for n in (await resp.json())["nodes"] if n["status"] == "healthy"}


class TestRegistrationToken:
    """The agent's --router-token lets it register where tokens are required."""

    async def test_token_required(self) -> None:
        """The agent with the token becomes a healthy node; the one without is refused."""
        settings = router_settings(
            registration_token_sha256=(digest(TOKEN),), admin_token_sha256=digest(ADMIN)
        )
        async with (
            serve_router(settings) as router,
            serve_emulator(NODES["gpu-box-2"]) as emulator,
            serve_agent(agent_settings("good", emulator.url, router.url, router_token=TOKEN)),
            serve_agent(agent_settings("bad", emulator.url, router.url)),
            aiohttp.ClientSession() as session,
        ):
            async with asyncio.timeout(5):
                while "good" not in await _names(session, router.url):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert await _names(session, router.url) == {"good"}
