"""An engine for the surface tests, on a real socket: it speaks OpenAI chat as real engines do
(reasoning, text and tool-call deltas, a usage chunk, ``[DONE]``), and Anthropic Messages and
OpenAI Responses itself only when told to (``native``). A test scripts its answers and failures
and reads what it was asked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "m-small"
NATIVE_MARK = {"answered_by": "the engine's own route"}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def tool_delta(index: int, arguments: str, call: str | None = None, name: str = "") -> dict:  # type: ignore[type-arg]
    """A tool call's delta: its first (``call`` id and ``name``) or a later one."""
    function: dict[str, Any] = {"arguments": arguments}
    entry: dict[str, Any] = {"index": index, "function": function}
    if call is not None:
        entry |= {"id": call, "type": "function"}
        function["name"] = name
    return chunk({"tool_calls": [entry]})


USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 12},
}
# Reasoning, text, then two tool calls whose arguments come in pieces; then the finish chunk and
# the usage chunk, as vLLM sends them.
TOOL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Weather, "}),
    chunk({"reasoning_content": "twice."}),
    chunk({"content": "Checking."}),
    tool_delta(0, "", "call_a", "get_weather"),
    tool_delta(0, '{"city": '),
    tool_delta(0, '"Paris"}'),
    tool_delta(1, '{"city": "Oslo"}', "call_b", "get_weather"),
    chunk({}, "tool_calls"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
]
TOOL_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "Weather, twice.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
}


@dataclass
class ChatEngine:
    """``native``: it has /v1/messages and /v1/responses; ``probe_status``: what it answers an
    empty body there (None: refuse it as a real engine does); ``cut_after``: drop the stream
    after that many events; ``chat_status``: refuse chat with that status."""

    native: bool = False
    probe_status: int | None = None
    stream: list[dict[str, Any]] = field(default_factory=lambda: list(TOOL_STREAM))
    whole: dict[str, Any] = field(default_factory=lambda: dict(TOOL_ANSWER))
    cut_after: int | None = None
    chat_status: int = 200
    native_status: int = 200
    asked: list[tuple[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/messages", self.surface)
        app.router.add_post("/v1/responses", self.surface)
        return app

    def paths(self) -> list[str]:
        return [path for path, _ in self.asked]

    def probes(self) -> int:
        return sum(1 for _, body in self.asked if body == {})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def surface(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.asked.append((request.path, body))
        if body == {} and self.probe_status is not None:
            return web.json_response({"probe": True}, status=self.probe_status)
        if not self.native:
            raise web.HTTPNotFound()
        if body == {}:
            return web.json_response({"error": {"message": "'model' is required"}}, status=400)
        if self.native_status != 200:
            error = {
                "code": self.native_status,
                "message": "the prompt is too long",
                "type": "exceed_context_size_error",
            }
            return web.json_response({"error": error}, status=self.native_status)
        if not body.get("stream"):
            return web.json_response(NATIVE_MARK)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: message_start\ndata: {"type":"message_start"}\n\n')
        await resp.write(b'event: content_block_delta\ndata: {"type":"content_block_')
        if request.transport is not None:
            request.transport.close()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.asked.append((request.path, body))
        if self.chat_status != 200:
            error = {"message": "bad chat", "type": "BadRequestError", "param": None, "code": 400}
            return web.json_response({"error": error}, status=self.chat_status)
        if not body.get("stream"):
            return web.json_response(self.whole)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, event in enumerate(self.stream):
            if self.cut_after is not None and n == self.cut_after:
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
