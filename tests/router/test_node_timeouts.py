"""A node's first byte and its pauses between chunks have separate bounds."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from router.app import serve
from router.settings import Timeouts, load_settings
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
TIMEOUTS = Timeouts(connect_s=1.0, first_byte_s=0.3, idle_s=5.0, total_s=30.0)


async def test_a_node_silent_past_the_first_byte_bound_times_out(
    session: aiohttp.ClientSession,
) -> None:
    """First byte 0.3 s, idle 5 s: a node that never answers costs 0.3 s, not 5 s (504)."""
    async with (
        serve(router_settings(timeouts=TIMEOUTS, max_attempts=1)) as router,
        running(FakeNode("n", mode="hang")) as node,
    ):
        await register(session, router.url, node)
        started = time.monotonic()
        async with session.post(router.url + CHAT, json=BODY) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["type"] == "upstream_timeout"
        assert time.monotonic() - started < 2.0


async def test_pauses_between_chunks_get_the_idle_bound(session: aiohttp.ClientSession) -> None:
    """Pauses of 0.5 s between chunks, longer than the first-byte bound, end normally."""
    async with (
        serve(router_settings(timeouts=TIMEOUTS)) as router,
        running(FakeNode("n", chunks=3, chunk_delay_s=0.5)) as node,
    ):
        await register(session, router.url, node)
        async with session.post(router.url + CHAT, json=BODY) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")
        assert "stream_interrupted" not in text


async def test_a_groups_own_timeouts_govern_its_calls_only(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """``[groups.timeouts]`` from the config file: a group with a 0.3 s first-byte bound
    answers 504 in time from a node slower than that, while a group without one waits for
    the same kind of node and gets its answer."""
    cfg = tmp_path / "router.toml"
    cfg.write_text(
        'host = "127.0.0.1"\nport = 0\nwarmup_s = 0\nmax_attempts = 1\nreport_interval_s = 0.2\n'
        "[timeouts]\nconnect_s = 1\nfirst_byte_s = 10\nidle_s = 10\ntotal_s = 30\n"
        '[[groups]]\nname = "fast"\n[groups.timeouts]\nfirst_byte_s = 0.3\n'
        '[[groups]]\nname = "patient"\n'
    )
    settings = load_settings(["--config", str(cfg)], {})
    plain = {**BODY, "stream": False}  # the nodes answer after chunks x delay = 2 s
    async with (
        serve(settings) as router,
        running(FakeNode("f", chunks=4, chunk_delay_s=0.5)) as fast_node,
        running(FakeNode("p", chunks=4, chunk_delay_s=0.5)) as patient_node,
    ):
        await register(session, router.url, fast_node, group="fast")
        await register(session, router.url, patient_node, group="patient")
        started = time.monotonic()
        async with session.post(f"{router.url}/fast/v1/chat/completions", json=plain) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["type"] == "upstream_timeout"
        assert time.monotonic() - started < 1.5
        async with session.post(f"{router.url}/patient/v1/chat/completions", json=plain) as resp:
            assert resp.status == 200
            assert (await resp.json())["node"] == "p"
