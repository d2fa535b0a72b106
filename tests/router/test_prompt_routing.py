"""Routing on the nodes' prompt caches through the router, over sockets: a conversation's later
turns go where this router sent its earlier ones."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from node_protocol.prompt_prefix import BLOCK_CHARS, SCHEME, fingerprint, recorded_hashes
from node_protocol.wire import PrefixSummary
from router.app import REGISTRY, serve
from router.prompt_routing import PromptRoute
from router.settings import GroupSettings
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, report, running, scripted

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


def _summary_report(node: FakeNode, held: int) -> dict[str, Any]:
    """A report whose prefix summary holds conversation ``held``'s first turn."""
    fp = fingerprint(_turns(held, 1))
    summary = PrefixSummary(MODEL, SCHEME, frozenset(recorded_hashes(fp)), 1 << 24, fp.chars)
    body = report(node.models)
    body["prefixCaches"] = [summary.to_json()]
    return body


async def _fleet_with_summaries(
    session: aiohttp.ClientSession, urls: list[str], nodes: list[FakeNode]
) -> None:
    """Register the nodes with every router and report a summary from each: node ``i``
    holds conversation ``1000 + i``."""
    for url in urls:
        for i, node in enumerate(nodes):
            node_id = await register(session, url, node)
            put = f"{url}/api/server-groups/inference-cluster/nodes/{node_id}/report"
            async with session.put(put, json=_summary_report(node, 1000 + i)) as resp:
                assert resp.status in (200, 204), await resp.text()


async def test_replicas_send_each_new_prefix_to_one_node_and_spread_new_prefixes(
    session: aiohttp.ClientSession,
) -> None:
    """Two router replicas with the same reports send each new conversation to the same node,
    and new conversations on an idle fleet spread over its nodes by their leading block."""
    settings = router_settings(report_interval_s=30.0)
    async with serve(settings) as first, serve(settings) as second:
        nodes = [FakeNode(f"n{i}", models=(MODEL,)) for i in range(4)]
        async with running(nodes[0]), running(nodes[1]), running(nodes[2]), running(nodes[3]):
            await _fleet_with_summaries(session, [first.url, second.url], nodes)
            picks = []
            for conversation in range(8):
                body = _turns(conversation, 1)
                one = await _served_by(session, first.url, body)
                other = await _served_by(session, second.url, body)
                assert one == other, (conversation, one, other)
                picks.append(one)
            assert len(set(picks)) > 1, picks


async def _prompt_chars_lines(session: aiohttp.ClientSession, url: str) -> list[str]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith("router_prompt_chars_total{")]


async def test_a_group_with_prefix_routing_off_routes_blind(
    session: aiohttp.ClientSession,
) -> None:
    """With ``prefix_routing = false`` for its group, the router neither weighs nor notes
    prompts: no prompt characters are counted, and a conversation's turns go wherever the
    blind policy's random tie-breaks send them (six conversations of three turns on four idle
    nodes all staying put by chance: about one in 10^7)."""
    groups = (GroupSettings(name="inference-cluster", prefix_routing=False),)
    async with serve(router_settings(report_interval_s=30.0, groups=groups)) as router:
        nodes = [FakeNode(f"n{i}", models=(MODEL,)) for i in range(4)]
        async with running(nodes[0]), running(nodes[1]), running(nodes[2]), running(nodes[3]):
            for node in nodes:
                await register(session, router.url, node)
            stayed = 0
            for conversation in range(6):
                served = {
                    await _served_by(session, router.url, _turns(conversation, turns))
                    for turns in (1, 2, 3)
                }
                stayed += len(served) == 1
            assert stayed < 6
            assert await _prompt_chars_lines(session, router.url) == []


class TestShortPrompts:
    """A prompt shorter than one block is never fingerprinted: no node holds a block of it."""

    def test_a_body_shorter_than_a_block_has_no_prompt_route(self) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        size = len(orjson.dumps(body))
        assert PromptRoute.of(body, "/v1/chat/completions", "least_loaded", size) is None

    def test_a_long_prompt_in_a_long_body_is_routed(self) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * BLOCK_CHARS}]}
        size = len(orjson.dumps(body))
        route = PromptRoute.of(body, "/v1/chat/completions", "least_loaded", size)
        assert route is not None
        assert route.fp.chars >= BLOCK_CHARS


async def test_a_prefill_rate_is_learned_from_what_the_engine_says_it_read(
    session: aiohttp.ClientSession,
) -> None:
    """The first token of a prompt the node took at once teaches its prefill rate; where the
    answer says how many prompt tokens came from the engine's cache, only the rest count as
    read (here a third of the prompt, not all of it as the router's estimate would have it)."""
    answer_s = 0.2

    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(answer_s)
        usage = {"prompt_tokens": 3000, "completion_tokens": 2, "total_tokens": 3002,
                 "prompt_tokens_details": {"cached_tokens": 2000}}  # fmt: skip
        message = {"role": "assistant", "content": "ok"}
        return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL,
                                  "choices": [{"index": 0, "message": message,
                                               "finish_reason": "stop"}],
                                  "usage": usage})  # fmt: skip

    async with serve(router_settings()) as router, scripted("cacher", answer) as node:
        await register(session, router.url, node)
        body = _turns(0, 1)
        async with session.post(router.url + CHAT, json=body) as resp:
            assert resp.status == 200
            await resp.read()
        (learned,) = router.app[REGISTRY].groups["inference-cluster"].nodes.values()
    chars = fingerprint(body).chars
    read = chars / 3  # the 1,000 of 3,000 tokens not cached
    assert learned.prefill_chars_per_s is not None
    assert read / (answer_s * 2) < learned.prefill_chars_per_s <= read / answer_s
