"""Routing on the nodes' prompt caches through the router, over sockets: a conversation's later
turns go where this router sent its earlier ones."""

from __future__ import annotations

import random
from typing import Any

import aiohttp

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"
MODEL = "m-small"


def _turns(conversation: int, turns: int) -> dict[str, Any]:
    """A conversation of ``turns`` user turns behind a long system prompt of its own."""
    rng = random.Random(conversation)
    system = "".join(rng.choice("abcdefghij ") for _ in range(12_000))
    messages = [{"role": "system", "content": system}]
    for t in range(turns):
        if t:
            messages.append({"role": "assistant", "content": f"answer {t} " * 20})
        messages.append({"role": "user", "content": f"question {t} " * 20})
    return {"model": MODEL, "messages": messages}


async def _served_by(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url + CHAT, json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["X-Inference-Node"]


async def test_later_turns_go_where_this_router_sent_the_conversation(
    session: aiohttp.ClientSession,
) -> None:
    """With no node reporting a cache, each conversation's second and third turns reach the
    node its first turn went to: what this router routed there counts as held until a report."""
    async with serve(router_settings(report_interval_s=30.0)) as router:
        nodes = [FakeNode(f"n{i}", models=(MODEL,)) for i in range(4)]
        async with running(nodes[0]), running(nodes[1]), running(nodes[2]), running(nodes[3]):
            for node in nodes:
                await register(session, router.url, node)
            for conversation in range(6):
                served = [
                    await _served_by(session, router.url, _turns(conversation, turns))
                    for turns in (1, 2, 3)
                ]
                assert len(set(served)) == 1, (conversation, served)
