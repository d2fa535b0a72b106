"""Anthropic Messages and OpenAI Responses route like chat: to the nodes that can answer them
(an agent node of any kind but Triton; a node without an agent only when its engine speaks the
surface), with failover, the client's key in ``x-api-key``, and streams relayed as they come."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from router.app import RunningRouter, serve
from router.auth import ApiKey, digest
from tests.conftest import router_settings
from tests.router.surface_node import (
    GROUP,
    MODEL,
    PIECES,
    SurfaceNode,
    messages_events,
    register,
    responses_events,
    running,
)
from tests.router.test_surface_input import is_anthropic_error

MESSAGES = f"/{GROUP}/v1/messages"
RESPONSES = f"/{GROUP}/v1/responses"
CHAT = f"/{GROUP}/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
KEY = "sk-acme-0123456789"


def messages(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 8, "messages": HI, "stream": stream}


def responses(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", "stream": stream}


async def wait_polled(session: aiohttp.ClientSession, router: RunningRouter, name: str) -> None:
    """Until the router has polled the agentless node ``name`` and found it healthy."""
    async with asyncio.timeout(5):
        while True:
            async with session.get(f"{router.url}/api/server-groups/{GROUP}/nodes") as resp:
                nodes = (await resp.json())["nodes"]
            if any(n["name"] == name and n["status"] == "healthy" for n in nodes):
                return
            await asyncio.sleep(0.05)


class TestRouting:
    @pytest.mark.parametrize(
        ("path", "body", "events"),
        [
            (MESSAGES, messages(True), messages_events()),
            (RESPONSES, responses(True), responses_events()),
        ],
    )
    async def test_stream_is_relayed_as_the_node_sent_it(
        self,
        router: RunningRouter,
        session: aiohttp.ClientSession,
        path: str,
        body: dict[str, Any],
        events: list[bytes],
    ) -> None:
        """A streamed Messages or Responses answer reaches the client byte for byte, with the
        router's headers."""
        async with running(SurfaceNode("n1")) as node:
            await register(session, router.url, node)
            async with session.post(router.url + path, json=body) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert resp.headers["X-Inference-Node"] == "n1"
                assert await resp.read() == b"".join(events)

    async def test_failover_before_the_first_byte(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node that answers 500 is left for the next one, on both surfaces."""
        async with (
            running(SurfaceNode("bad", mode="error_500")) as bad,
            running(SurfaceNode("good")) as good,
        ):
            await register(session, router.url, bad)
            await register(session, router.url, good)
            for path, body in ((MESSAGES, messages()), (RESPONSES, responses())) * 3:
                async with session.post(router.url + path, json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["node"] == "good"
        assert len(good.seen) == 6

    async def test_agentless_and_triton_nodes_get_neither_surface(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node without an agent (its engine unknown) and a Triton agent node serve chat but
        not Messages or Responses: no agent would translate for them."""
        async with running(SurfaceNode("bare")) as bare, running(SurfaceNode("tri")) as tri:
            await register(session, router.url, bare, agent=False)
            await wait_polled(session, router, "bare")
            await register(session, router.url, tri, kind="triton")
            for path, body in ((MESSAGES, messages()), (RESPONSES, responses())):
                async with session.post(router.url + path, json=body) as resp:
                    assert resp.status == 404
                    text = await resp.text()
                    assert "on a backend that speaks this API" in text
            chat = {"model": MODEL, "messages": HI}
            async with session.post(router.url + CHAT, json=chat) as resp:
                assert resp.status == 200
        assert [seen[0] for seen in bare.seen + tri.seen] == ["/v1/chat/completions"]

    async def test_only_nodes_that_can_answer_are_picked(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Beside an agentless node serving the same model, every Messages request goes to the
        agent node."""
        async with running(SurfaceNode("bare")) as bare, running(SurfaceNode("agent")) as agent:
            await register(session, router.url, bare, agent=False)
            await wait_polled(session, router, "bare")
            await register(session, router.url, agent, kind="ollama")
            for _ in range(6):
                async with session.post(router.url + MESSAGES, json=messages()) as resp:
                    assert resp.status == 200
        assert (len(agent.seen), bare.seen) == (6, [])


class TestAnthropicKeys:
    async def test_x_api_key_is_the_clients_key(self, session: aiohttp.ClientSession) -> None:
        """With client keys on, ``x-api-key`` authenticates like a bearer token and names the
        tenant; a missing or wrong key is a 401 authentication_error in Anthropic's envelope."""
        settings = router_settings(api_keys=(ApiKey("acme", digest(KEY)),))
        async with running(SurfaceNode("n1")) as node, serve(settings) as router:
            await register(session, router.url, node)
            url = router.url + MESSAGES
            headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
            async with session.post(url, json=messages(), headers=headers) as resp:
                assert resp.status == 200
            for sent in ({}, {"x-api-key": "sk-wrong"}):
                async with session.post(url, json=messages(), headers=sent) as resp:
                    assert resp.status == 401
                    assert is_anthropic_error(await resp.json(), "authentication_error")
        ((_, _, node_headers),) = node.seen
        assert node_headers["X-Octopus-Tenant-Id"] == "acme"
        assert "x-api-key" not in {k.lower() for k in node_headers}


class TestCutStreams:
    @pytest.mark.parametrize(
        ("path", "body", "name"),
        [(MESSAGES, messages(True), b"error"), (RESPONSES, responses(True), b"error")],
    )
    async def test_cut_stream_ends_with_the_surfaces_error_event(
        self,
        router: RunningRouter,
        session: aiohttp.ClientSession,
        path: str,
        body: dict[str, Any],
        name: bytes,
    ) -> None:
        """A node that drops a Messages or Responses stream midway: the client's stream ends
        with that surface's ``event: error``, which its SDK raises on."""
        async with running(SurfaceNode("n1", mode="die_mid_stream")) as node:
            await register(session, router.url, node)
            async with session.post(router.url + path, json=body) as resp:
                data = await resp.read()
        last = data.rstrip(b"\n").split(b"\n\n")[-1]
        event, _, payload = last.partition(b"\ndata: ")
        assert event == b"event: " + name
        assert json.loads(payload)["type"] == "error"
        assert PIECES[0].encode() in data


class TestClaudeNames:
    async def test_claudes_model_name_aliased_to_a_local_model(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Claude Code asks for Claude's model names: an alias sends them to a local model, and
        the answer names the model the client asked for."""
        settings = router_settings(aliases={"claude-sonnet-4-5": ("m-small",)})
        async with running(SurfaceNode("n1")) as node, serve(settings) as router:
            await register(session, router.url, node)
            body = messages() | {"model": "claude-sonnet-4-5"}
            async with session.post(router.url + MESSAGES, json=body) as resp:
                assert resp.status == 200
                answer = await resp.json()
        assert node.seen[0][1]["model"] == MODEL
        assert answer["model"] == "claude-sonnet-4-5"
