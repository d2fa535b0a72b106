"""The streaming helper every fake backend shares, and Ollama's native API (§2.5).

A test pauses a stream after its first frame (``gate``), drops it (``drop_mid_stream``) and
sees whether the backend was cancelled; every fake records what it was asked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

TOKENS = ("Hel", "lo", " world")


def answering() -> asyncio.Event:
    """A fake's switch, set: it answers. Cleared, it takes requests and answers none, as a
    stopped process does, until set again."""
    event = asyncio.Event()
    event.set()
    return event


class StreamControls(Protocol):
    """The knobs and witnesses a test uses on a fake's streams."""

    gate: asyncio.Event | None
    first_sent: asyncio.Event
    last_sent: asyncio.Event
    cancelled: asyncio.Event
    drop_mid_stream: bool
    requests: list[tuple[str, CIMultiDict[str], bytes]]


class OllamaControls(StreamControls, Protocol):
    """An Ollama fake's state: its downloaded models and the pieces it streams."""

    ollama_tags: list[dict[str, Any]]
    tokens: tuple[str, ...]


@dataclass
class Controls:
    """A fake's stream knobs (``gate``: pause after the first frame) and what it was asked."""

    gate: asyncio.Event | None = None
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    drop_mid_stream: bool = False
    requests: list[tuple[str, CIMultiDict[str], bytes]] = field(default_factory=list)
    health_status: int = 200


async def record(request: web.Request, ctl: StreamControls) -> bytes:
    body = await request.read()
    ctl.requests.append((request.path, CIMultiDict(request.headers), body))
    return body


async def stream_frames(
    request: web.Request, ctl: StreamControls, frames: Sequence[bytes], content_type: str
) -> web.StreamResponse:
    """Write the frames one by one; pause after the first while ``ctl.gate`` is unset."""
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    try:
        await resp.write(frames[0])
        ctl.first_sent.set()
        if ctl.drop_mid_stream:
            assert request.transport is not None
            request.transport.abort()
            return resp
        if ctl.gate is not None:
            await ctl.gate.wait()
        for frame in frames[1:]:
            await resp.write(frame)
        ctl.last_sent.set()
        await resp.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        ctl.cancelled.set()
        raise
    return resp


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def ollama_native(request: web.Request, state: OllamaControls) -> web.StreamResponse:
    """``/api/chat`` and ``/api/generate``: NDJSON unless ``"stream": false``."""
    payload = json.loads(await record(request, state))
    model = payload.get("model")
    if model not in {t["name"] for t in state.ollama_tags}:
        return web.json_response({"error": f"model '{model}' not found"}, status=404)
    chat = request.path == "/api/chat"
    stamp = {"model": model, "created_at": "2026-01-01T00:00:00.000000Z"}

    def piece(text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    final = {
        **stamp,
        **piece(""),
        "done": True,
        "done_reason": "stop",
        "total_duration": 812000000,  # nanoseconds
        "load_duration": 1200000,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 21000000,
        "eval_count": 7,  # tokens, not text pieces: the exact count wins
        "eval_duration": 790000000,
    }
    if payload.get("stream") is False:
        return web.json_response(final | piece("".join(state.tokens)))
    frames = [dumps(stamp | piece(t) | {"done": False}) + b"\n" for t in state.tokens]
    frames.append(dumps(final) + b"\n")
    return await stream_frames(request, state, frames, "application/x-ndjson")


async def ollama_embed(request: web.Request, state: OllamaControls) -> web.Response:
    body = json.loads(await record(request, state))
    return web.json_response(
        {
            "model": body["model"],
            "embeddings": [[0.1, 0.2, 0.3]],
            "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": 8,
        }
    )
