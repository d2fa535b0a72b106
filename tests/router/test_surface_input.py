"""Bad input on the Anthropic Messages and OpenAI Responses surfaces: each gets its surface's own
envelope and status from the router, and no node ever sees it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from router.app import RunningRouter, serve
from tests.conftest import router_settings
from tests.router.surface_node import GROUP, MODEL, SurfaceNode, register, running

MESSAGES = f"/{GROUP}/v1/messages"
RESPONSES = f"/{GROUP}/v1/responses"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


def messages(**fields: Any) -> str:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "messages": HI}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None})


def responses(**fields: Any) -> str:
    body: dict[str, Any] = {"model": MODEL, "input": "hi"}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None})


def is_anthropic_error(body: Any, type_: str) -> bool:
    """Anthropic's envelope, exactly: ``{"type": "error", "error": {"type", "message"}}``."""
    return (
        isinstance(body, dict)
        and set(body) == {"type", "error"}
        and body["type"] == "error"
        and set(body["error"]) == {"type", "message"}
        and body["error"]["type"] == type_
        and isinstance(body["error"]["message"], str)
        and bool(body["error"]["message"])
    )


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


BAD_MESSAGES = {
    "not json": "{not json",
    "not an object": "[1, 2]",
    "no model": messages(model=None),
    "no max_tokens": messages(max_tokens=None),
    "max_tokens zero": messages(max_tokens=0),
    "max_tokens over the cap": messages(max_tokens=10**9),
    "no messages": messages(messages=None),
    "empty messages": messages(messages=[]),
    "a system role in messages": messages(messages=[{"role": "system", "content": "x"}]),
    "empty content list": messages(messages=[{"role": "user", "content": []}]),
    "unknown block type": messages(
        messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]
    ),
    "text block without text": messages(messages=[{"role": "user", "content": [{"type": "text"}]}]),
    "tool_use from the user": messages(
        messages=[
            {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
        ]
    ),
    "tool_result from the assistant": messages(
        messages=[
            *HI,
            {
                "role": "assistant",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}],
            },
        ]
    ),
    "stream not a boolean": messages(stream="yes"),
    "system not text": messages(system=7),
    "tool without input_schema": messages(tools=[{"name": "f"}]),
    "server tool": messages(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
    "unknown tool_choice": messages(tools=[TOOL], tool_choice={"type": "sometimes"}),
    "stop_sequences not a list": messages(stop_sequences="END"),
}

BAD_RESPONSES = {
    "not json": ("{not json", None),
    "no model": (responses(model=None), "model"),
    "previous_response_id": (responses(previous_response_id="resp_1"), "previous_response_id"),
    "conversation": (responses(conversation="conv_1"), "conversation"),
    "background": (responses(background=True), "background"),
    "no input": (responses(input=None), "input"),
    "empty input": (responses(input=""), "input"),
    "empty input list": (responses(input=[]), "input"),
    "item reference": (responses(input=[{"type": "item_reference", "id": "msg_1"}]), "input"),
    "unknown role": (responses(input=[{"role": "tool", "content": "x"}]), "input"),
    "function call without call_id": (
        responses(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]),
        "input",
    ),
    "unknown part type": (
        responses(input=[{"role": "user", "content": [{"type": "video"}]}]),
        "input",
    ),
    "max_output_tokens zero": (responses(max_output_tokens=0), "max_output_tokens"),
    "stream not a boolean": (responses(stream=1), "stream"),
    "tools not a list": (responses(tools={"type": "function"}), "tools"),
    "tool_choice not a choice": (responses(tool_choice=5), "tool_choice"),
}


@pytest.fixture
async def node_and_router(
    session: aiohttp.ClientSession,
) -> AsyncIterator[tuple[SurfaceNode, RunningRouter]]:
    async with running(SurfaceNode("n1")) as node, serve(router_settings()) as router:
        await register(session, router.url, node)
        yield node, router


async def post(session: aiohttp.ClientSession, url: str, data: str) -> tuple[int, Any]:
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


class TestMessagesInput:
    @pytest.mark.parametrize("name", BAD_MESSAGES)
    async def test_bad_body_is_400_in_anthropic_envelope_and_never_sent(
        self,
        name: str,
        node_and_router: tuple[SurfaceNode, RunningRouter],
        session: aiohttp.ClientSession,
    ) -> None:
        """A Messages body the router can refuse is a 400 invalid_request_error in Anthropic's
        envelope, and the node never sees it."""
        node, router = node_and_router
        status, body = await post(session, router.url + MESSAGES, BAD_MESSAGES[name])
        assert status == 400
        assert is_anthropic_error(body, "invalid_request_error"), body
        assert node.seen == []

    async def test_a_good_body_reaches_the_node_untouched(
        self, node_and_router: tuple[SurfaceNode, RunningRouter], session: aiohttp.ClientSession
    ) -> None:
        """The control case: a valid body with tools and tool turns goes to the node as sent."""
        node, router = node_and_router
        turns = [
            *HI,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ]
        sent = messages(messages=turns, tools=[TOOL], tool_choice={"type": "auto"}, system="be")
        status, body = await post(session, router.url + MESSAGES, sent)
        assert status == 200, body
        assert node.seen[0][0] == "/v1/messages"
        assert node.seen[0][1] == json.loads(sent)

    async def test_unknown_model_group_and_path_are_404_not_found_error(
        self, node_and_router: tuple[SurfaceNode, RunningRouter], session: aiohttp.ClientSession
    ) -> None:
        """An unknown model, group or path under Messages is 404 not_found_error."""
        _, router = node_and_router
        status, body = await post(session, router.url + MESSAGES, messages(model="nope"))
        assert (status, is_anthropic_error(body, "not_found_error")) == (404, True)
        status, body = await post(session, router.url + "/nogroup/v1/messages", messages())
        assert (status, is_anthropic_error(body, "not_found_error")) == (404, True)
        path = router.url + MESSAGES + "/count_tokens"
        status, body = await post(session, path, messages())
        assert (status, is_anthropic_error(body, "not_found_error")) == (404, True)

    async def test_wrong_method_and_big_body(
        self, node_and_router: tuple[SurfaceNode, RunningRouter], session: aiohttp.ClientSession
    ) -> None:
        """GET is a 405 and a body past the limit a 413 request_too_large, in Anthropic's
        envelope."""
        _, router = node_and_router
        async with session.get(router.url + MESSAGES) as resp:
            assert resp.status == 405
            assert is_anthropic_error(await resp.json(), "invalid_request_error")
        big = messages(messages=[{"role": "user", "content": "x" * 70_000}])
        status, body = await post(session, router.url + MESSAGES, big)
        assert (status, is_anthropic_error(body, "request_too_large")) == (413, True)

    async def test_no_healthy_node_is_529_overloaded_with_retry_after(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """With the model's only node down, Messages answers Anthropic's 529 overloaded_error
        (503 on the OpenAI surfaces), with Retry-After."""
        async with running(SurfaceNode("n1")) as node:
            await register(session, router.url, node, health="unhealthy")
            async with session.post(router.url + MESSAGES, data=messages()) as resp:
                assert resp.status == 529
                assert is_anthropic_error(await resp.json(), "overloaded_error")
                assert int(resp.headers["Retry-After"]) > 0
            status, body = await post(session, router.url + RESPONSES, responses())
            assert status == 503
            assert is_openai_error(body)


class TestResponsesInput:
    @pytest.mark.parametrize("name", BAD_RESPONSES)
    async def test_bad_body_is_400_in_openai_envelope_and_never_sent(
        self,
        name: str,
        node_and_router: tuple[SurfaceNode, RunningRouter],
        session: aiohttp.ClientSession,
    ) -> None:
        """A Responses body the router can refuse is a 400 in the OpenAI envelope naming the
        field, and the node never sees it."""
        node, router = node_and_router
        data, param = BAD_RESPONSES[name]
        status, body = await post(session, router.url + RESPONSES, data)
        assert status == 400
        assert is_openai_error(body), body
        assert body["error"]["param"] == param
        assert node.seen == []

    async def test_previous_response_id_says_the_router_is_stateless(
        self, node_and_router: tuple[SurfaceNode, RunningRouter], session: aiohttp.ClientSession
    ) -> None:
        """The 400 for a previous_response_id says why and what to send instead."""
        _, router = node_and_router
        data = responses(previous_response_id="resp_1")
        _, body = await post(session, router.url + RESPONSES, data)
        message = body["error"]["message"]
        assert "stateless" in message
        assert "whole conversation" in message

    async def test_store_true_is_accepted(
        self, node_and_router: tuple[SurfaceNode, RunningRouter], session: aiohttp.ClientSession
    ) -> None:
        """``store: true`` is not refused (it buys nothing through a stateless router)."""
        node, router = node_and_router
        status, _ = await post(session, router.url + RESPONSES, responses(store=True))
        assert status == 200
        assert len(node.seen) == 1
