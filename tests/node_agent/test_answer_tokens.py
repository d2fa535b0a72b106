"""The agent counts a relayed stream's output tokens with the router's reader: reasoning and
tool-call deltas are output, however the backend's writes split the events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from node_agent.app import serve

from .conftest import ServerFactory, agent_settings, base_url, wait_until

DELTAS: tuple[dict[str, Any], ...] = (
    {"role": "assistant", "content": None},  # no output yet
    {"reasoning_content": "The user"},
    {"reasoning": " wants weather"},
    {
        "tool_calls": [
            {
                "index": 0,
                "id": "call-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    },
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
)
OUTPUT_DELTAS = len(DELTAS) - 1


async def chat(request: web.Request) -> web.StreamResponse:
    """A vLLM-style tool-calling stream with no usage, each event written in two halves cut
    inside its delta."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for delta in DELTAS:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        chunk = {"object": "chat.completion.chunk", "choices": [choice]}
        event = b"data: " + json.dumps(chunk).encode()
        cut = event.index(b'"delta"') + 4
        await resp.write(event[:cut])
        await asyncio.sleep(0.01)
        await resp.write(event[cut:] + b"\n\n")
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    await resp.write(b"data: " + json.dumps({"choices": [last]}).encode() + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def test_reasoning_and_tool_call_deltas_count_as_output_tokens(
    aiohttp_server: ServerFactory,
) -> None:
    """Every reasoning or tool-call delta of a stream split mid-event is one output token."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    backend = await aiohttp_server(app)
    settings = agent_settings(base_url(backend), backend_kind="vllm")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "weather?"}]}
    async with serve(settings) as agent, aiohttp.ClientSession() as client:
        async with client.post(f"{agent.url}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            await r.read()
        await wait_until(lambda: agent.stats.in_flight == 0)
        assert agent.stats.output_tokens == OUTPUT_DELTAS
