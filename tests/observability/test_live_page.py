"""The router's live page at /dashboard in a real headless Chromium, driven by Playwright.

The page is opened on an in-process cluster (router, three emulated GPU boxes, their agents) at a
laptop's viewport; it must show every node with its state and its VRAM per GPU, follow a node that
goes down without a reload, load nothing from other hosts and log no script errors. Screenshots
land in ``artifacts/`` at the repository root.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from tests.e2e.conftest import NODES, LocalCluster, local_cluster

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Page

LAPTOP = {"width": 1366, "height": 768}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOWN_NODE = "gpu-box-2"


@contextlib.asynccontextmanager
async def browser_page(chromium: str) -> AsyncIterator[Page]:
    """A fresh Chromium (Playwright gives each launch its own temporary profile) and a page."""
    from playwright.async_api import async_playwright  # imported once the fixture found it

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport=LAPTOP)
        finally:
            await browser.close()


async def _traffic(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    """A few streamed answers (tokens/s in the header) and one unknown model (an error row)."""
    for model in ("llama3.1:8b", "llama2:13b", "llama3.1:70b"):
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(cluster.base_url + "/chat/completions", json=body) as resp:
            assert resp.status == 200
            await resp.read()
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(cluster.base_url + "/chat/completions", json=body) as resp:
        assert resp.status == 404


def _console_error(msg: ConsoleMessage, errors: list[str]) -> None:
    # Chromium asks for /favicon.ico on its own; the page declares no icon, so that 404 is noise.
    if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico"):
        errors.append(f"{msg.text} at {msg.location}")


class TestLivePage:
    """The live page shows the fleet as the router sees it and keeps up with it by itself."""

    @pytest.mark.timeout(60)
    async def test_nodes_states_and_vram_follow_the_fleet(
        self, chromium_bin: str, artifacts: Path
    ) -> None:
        """Every node shows healthy with one VRAM line per GPU; when a backend dies its node
        turns unhealthy and loses its VRAM figures within seconds, the others stay as they were."""
        from playwright.async_api import expect

        async with (
            local_cluster() as cluster,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
            browser_page(chromium_bin) as page,
        ):
            urls: list[str] = []
            errors: list[str] = []
            page.on("request", lambda req: urls.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: _console_error(msg, errors))
            await _traffic(session, cluster)
            await page.goto(cluster.router.url + "/dashboard")

            for name, config in NODES.items():
                card = page.locator(f'[data-node="{name}"]')
                await expect(card).to_have_attribute("data-state", "healthy")
                await expect(card.locator(".state")).to_have_text("healthy")
                vram = card.locator(".vram")
                await expect(vram).to_have_count(len(config.gpu_memory_gb))
                for i, gb in enumerate(config.gpu_memory_gb):
                    await expect(vram.nth(i)).to_contain_text(f"/ {gb:.1f} GiB")
            await expect(page.locator("#errors tbody tr")).not_to_have_count(0)
            await page.screenshot(path=artifacts / "dashboard-healthy.png", full_page=True)

            await cluster.stop_emulator(DOWN_NODE)
            down = page.locator(f'[data-node="{DOWN_NODE}"]')
            await expect(down).to_have_attribute("data-state", "unhealthy", timeout=10_000)
            await expect(down.locator(".state")).to_have_text("unhealthy")
            await expect(down.locator(".vram")).to_have_count(0)
            for name, config in NODES.items():
                if name != DOWN_NODE:
                    card = page.locator(f'[data-node="{name}"]')
                    await expect(card).to_have_attribute("data-state", "healthy")
                    await expect(card.locator(".vram")).to_have_count(len(config.gpu_memory_gb))
            await page.screenshot(path=artifacts / "dashboard.png", full_page=True)

        assert not errors
        assert urls
        assert all(url.startswith(cluster.router.url + "/") for url in urls), urls
