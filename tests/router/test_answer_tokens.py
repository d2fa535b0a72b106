"""Tokens and times read from every surface's answers, through a real router on real sockets.

The node answers as real servers do: Python's ``json.dumps`` (a space after each colon), the
completions surface's ``text``, Ollama's ``/api/generate`` ``response`` lines written in halves,
Triton's ``text_output`` events, Anthropic Messages' and OpenAI Responses' named events. Each
answer must show in the router's TTFT, TPOT and token metrics, and charge the tenant's token
budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from router.app import serve
from tests.conftest import router_settings
from tests.fakes import report, run_app

GROUP = "inference-cluster"
MODEL = "m-small"
PIECES = ("The", " sky", " is", " blue")
GAP_S = 0.01  # between events, so that TPOT is a time


async def _stream(request: web.Request, content_type: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    return resp


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    """llama.cpp's Python server: OpenAI chat chunks written by json.dumps; a whole answer with
    its usage where the request did not ask for a stream."""
    if not (await request.json()).get("stream"):
        message = {"role": "assistant", "content": "".join(PIECES)}
        usage = {"prompt_tokens": 3, "completion_tokens": len(PIECES), "total_tokens": 7}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.Response(
            text=json.dumps({"id": "chatcmpl-1", "choices": [choice], "usage": usage}),
            content_type="application/json",
        )
    resp = await _stream(request, "text/event-stream")
    for piece in PIECES:
        delta = {"role": "assistant", "content": piece}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await resp.write(_sse({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                               "model": MODEL, "choices": [choice]}))  # fmt: skip
        await asyncio.sleep(GAP_S)
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    await resp.write(_sse({"id": "chatcmpl-1", "choices": [last]}) + b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    """An OpenAI completions stream: the text is in ``choices[].text``."""
    resp = await _stream(request, "text/event-stream")
    for n, piece in enumerate(PIECES):
        finish = "length" if n == len(PIECES) - 1 else None
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        await resp.write(_sse({"id": "cmpl-1", "object": "text_completion", "choices": [choice]}))
        await asyncio.sleep(GAP_S)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def ollama_generate(request: web.Request) -> web.StreamResponse:
    """Ollama's ``/api/generate``: NDJSON ``response`` lines, each sent in two halves, and a
    final line whose ``eval_count`` is the exact count."""
    resp = await _stream(request, "application/x-ndjson")
    for piece in PIECES:
        line = json.dumps({"model": MODEL, "response": piece, "done": False}).encode() + b"\n"
        half = len(line) // 2
        await resp.write(line[:half])
        await asyncio.sleep(GAP_S)
        await resp.write(line[half:])
    final = {"model": MODEL, "response": "", "done": True, "done_reason": "stop",
             "prompt_eval_count": 3, "eval_count": 6}  # fmt: skip
    await resp.write(json.dumps(final).encode() + b"\n")
    await resp.write_eof()
    return resp


async def triton_stream(request: web.Request) -> web.StreamResponse:
    """Triton's ``generate_stream``: ``text_output`` events and no end marker."""
    resp = await _stream(request, "text/event-stream; charset=utf-8")
    for piece in PIECES:
        event = {"model_name": MODEL, "model_version": "1", "text_output": piece}
        await resp.write(_sse(event))
        await asyncio.sleep(GAP_S)
    await resp.write_eof()
    return resp


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _sse(obj)


async def messages(request: web.Request) -> web.StreamResponse:
    """llama-server's Anthropic Messages stream: the exact count comes in ``message_delta``."""
    resp = await _stream(request, "text/event-stream")
    usage = {"cache_read_input_tokens": 2, "input_tokens": 5, "output_tokens": 0}
    start = {"type": "message_start", "message": {"id": "m", "content": [], "usage": usage}}
    await resp.write(_event("message_start", start))
    for piece in PIECES:
        delta = {"type": "text_delta", "text": piece}
        await resp.write(_event("content_block_delta", {"type": "content_block_delta",
                                                        "index": 0, "delta": delta}))  # fmt: skip
        await asyncio.sleep(GAP_S)
    end = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
           "usage": {"output_tokens": 7}}  # fmt: skip
    await resp.write(
        _event("message_delta", end) + _event("message_stop", {"type": "message_stop"})
    )
    await resp.write_eof()
    return resp


async def responses(request: web.Request) -> web.StreamResponse:
    """A Responses stream: ``response.output_text.delta`` events, the count at the end."""
    resp = await _stream(request, "text/event-stream")
    for n, piece in enumerate(PIECES):
        delta = {"type": "response.output_text.delta", "sequence_number": n, "delta": piece}
        await resp.write(_event(delta["type"], delta))  # type: ignore[arg-type]
        await asyncio.sleep(GAP_S)
    usage = {"input_tokens": 5, "output_tokens": 8, "total_tokens": 13}
    done = {"type": "response.completed",
            "response": {"object": "response", "status": "completed", "usage": usage}}  # fmt: skip
    await resp.write(_event("response.completed", done))
    await resp.write_eof()
    return resp


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def node_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/api/generate", ollama_generate)
    app.router.add_post("/v2/models/{model}/generate_stream", triton_stream)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/health", health)
    return app


@dataclass(frozen=True)
class Surface:
    kind: str  # the backend kind the node reports
    path: str
    body: dict[str, Any]
    tokens: int  # what the router must count


SURFACES = {
    "openai chat, json.dumps spacing": Surface(
        "vllm",
        "/v1/chat/completions",
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        len(PIECES),
    ),
    "openai completions text": Surface(
        "vllm", "/v1/completions", {"model": MODEL, "stream": True, "prompt": "hi"}, len(PIECES)
    ),
    "ollama generate response, split lines": Surface(
        "ollama", "/api/generate", {"model": MODEL, "prompt": "hi"}, 6
    ),
    "triton text_output": Surface(
        "triton", f"/v2/models/{MODEL}/generate_stream", {"text_input": "hi"}, len(PIECES)
    ),
    "anthropic messages, exact count in message_delta": Surface(
        "vllm",
        "/v1/messages",
        {
            "model": MODEL,
            "max_tokens": 7,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        7,
    ),
    "openai responses, exact count in response.completed": Surface(
        "vllm", "/v1/responses", {"model": MODEL, "stream": True, "input": "hi"}, 8
    ),
}


@pytest.fixture
async def node_url() -> AsyncIterator[str]:
    async with run_app(node_app()) as url:
        yield url


async def register(session: aiohttp.ClientSession, router_url: str, url: str, kind: str) -> None:
    body = {
        "name": "n1",
        "baseUrl": url,
        "healthUrl": f"{url}/health",
        "weight": 1,
        "metadata": {},
        "report": report((MODEL,)) | {"backendKind": kind},
    }
    async with session.post(f"{router_url}/api/server-groups/{GROUP}/nodes", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()


async def ask(session: aiohttp.ClientSession, router_url: str, surface: Surface) -> int:
    headers = {"X-Octopus-Tenant-Id": "acme"}
    url = f"{router_url}/{GROUP}{surface.path}"
    async with session.post(url, json=surface.body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def samples(session: aiohttp.ClientSession, router_url: str) -> dict[str, float]:
    """The request metrics of the model, by sample name."""
    async with session.get(router_url + "/metrics") as resp:
        text = await resp.text()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model") == MODEL and "le" not in s.labels
    }


@pytest.mark.parametrize("name", SURFACES)
async def test_ttft_tpot_and_tokens_are_read_from_every_surface(
    name: str, node_url: str, session: aiohttp.ClientSession
) -> None:
    """A streamed answer in any surface's shape shows its TTFT, TPOT and output tokens."""
    surface = SURFACES[name]
    async with serve(router_settings()) as router:
        await register(session, router.url, node_url, surface.kind)
        assert await ask(session, router.url, surface) == 200
        got = await samples(session, router.url)
    assert got["router_ttft_seconds_count"] == 1
    assert got["router_tpot_seconds_count"] == 1
    assert got["router_tpot_seconds_sum"] > 0
    assert got["router_output_tokens_total"] == surface.tokens


async def test_a_whole_answer_shows_its_tokens_and_ttft_but_no_time_per_token(
    node_url: str, session: aiohttp.ClientSession
) -> None:
    """A non-streamed answer's tokens all come at once: its output count and time to the answer
    are recorded, and it puts nothing (not a zero) in the time-per-token histogram."""
    whole = Surface(
        "vllm", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 4
    )
    async with serve(router_settings()) as router:
        await register(session, router.url, node_url, whole.kind)
        assert await ask(session, router.url, whole) == 200
        got = await samples(session, router.url)
    assert got["router_output_tokens_total"] == len(PIECES)
    assert got["router_ttft_seconds_count"] == 1
    assert got.get("router_tpot_seconds_count", 0) == 0


@pytest.mark.parametrize("name", SURFACES)
async def test_tenant_token_limit_is_charged_on_every_surface(
    name: str, node_url: str, session: aiohttp.ClientSession
) -> None:
    """A tenant whose answer used up its tokens per minute is refused its next request."""
    surface = SURFACES[name]
    async with serve(router_settings(tenant_tokens_per_minute=3)) as router:
        await register(session, router.url, node_url, surface.kind)
        assert await ask(session, router.url, surface) == 200
        url = f"{router.url}/{GROUP}{surface.path}"
        headers = {"X-Octopus-Tenant-Id": "acme"}
        async with session.post(url, json=surface.body, headers=headers) as resp:
            assert resp.status == 429
            error = (await resp.json())["error"]
        if surface.path == "/v1/messages":  # Anthropic's envelope: a type, no code
            assert error["type"] == "rate_limit_error"
            assert "output tokens per minute" in error["message"]
        else:
            assert error["code"] == "tokens_per_minute"
