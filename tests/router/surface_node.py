"""A node that speaks Anthropic Messages and OpenAI Responses itself, as vLLM and llama-server do,
on a real socket: it answers what tests set (whole, streamed, failing, cut mid-stream) and keeps
every request it saw."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import report, run_app

GROUP = "inference-cluster"
MODEL = "m-small"
PIECES = ("The", " sky", " is", " blue")


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def messages_events() -> list[bytes]:
    """A Messages stream as llama-server writes it."""
    usage = {"input_tokens": 3, "output_tokens": 0}
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "usage": usage,
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    out = [event("message_start", start), event("content_block_start", block)]
    for piece in PIECES:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        out.append(event("content_block_delta", delta))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": len(PIECES)},
    }
    out += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", end),
        event("message_stop", {"type": "message_stop"}),
    ]
    return out


def responses_events() -> list[bytes]:
    """A Responses stream, its text deltas and its end."""
    out = [
        event(
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {"id": "resp_1", "object": "response", "status": "in_progress"},
            },
        )
    ]
    for n, piece in enumerate(PIECES, 1):
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": n,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": piece,
        }
        out.append(event(delta["type"], delta))
    usage = {"input_tokens": 3, "output_tokens": len(PIECES), "total_tokens": 3 + len(PIECES)}
    done = {
        "type": "response.completed",
        "sequence_number": 9,
        "response": {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [],
            "usage": usage,
        },
    }
    out.append(event("response.completed", done))
    return out


@dataclass
class SurfaceNode:
    """``mode``: ok | error_500 | die_mid_stream."""

    name: str
    mode: str = "ok"
    seen: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.answer)
        app.router.add_post("/v1/responses", self.answer)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, body, dict(request.headers)))
        message = {"role": "assistant", "content": "".join(PIECES)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({"object": "chat.completion", "choices": [choice]})

    async def answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, body, dict(request.headers)))
        if self.mode == "error_500":
            return web.json_response({"error": {"message": "engine down"}}, status=500)
        anthropic = request.path == "/v1/messages"
        if not body.get("stream"):
            if anthropic:
                text = {"type": "text", "text": "".join(PIECES)}
                return web.json_response(
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [text],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 3, "output_tokens": 4},
                        "node": self.name,
                    }
                )
            return web.json_response(
                {
                    "id": "resp_1",
                    "object": "response",
                    "status": "completed",
                    "model": body["model"],
                    "output": [],
                    "node": self.name,
                    "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = messages_events() if anthropic else responses_events()
        for n, data in enumerate(events):
            if self.mode == "die_mid_stream" and n == 3:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(data)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def running(node: SurfaceNode) -> AsyncIterator[SurfaceNode]:
    async with run_app(node.app()) as url:
        node.url = url
        yield node


async def register(
    session: aiohttp.ClientSession,
    router_url: str,
    node: SurfaceNode,
    *,
    kind: str = "vllm",
    agent: bool = True,
    **report_kw: Any,
) -> None:
    """Register the node as an agent does (with a report of ``kind``), or without one, as a
    node that has no agent (the router then polls it)."""
    body: dict[str, Any] = {
        "name": node.name,
        "baseUrl": node.url,
        "healthUrl": f"{node.url}/health",
    }
    if agent:
        body["report"] = report((MODEL,), **report_kw) | {"backendKind": kind}
    async with session.post(f"{router_url}/api/server-groups/{GROUP}/nodes", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
