"""Fake peers for the agent tests: backends speaking each kind's API, and a router.

All are small aiohttp apps run on real sockets (port 0) by pytest-aiohttp's ``aiohttp_server``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from node_agent.settings import AgentSettings
from node_protocol.wire import LoadReport, Registration

from .fake_llamacpp import FakeLlamaCpp
from .fake_streams import answering, ollama_embed, ollama_native
from .fakes import FakeLmStudio, FakeTgi, FakeTriton

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1234.0
"""

OLLAMA_TAG_DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "8.0B",
    "quantization_level": "Q4_K_M",
}


def free_port() -> int:
    """A port nothing listens on (for 'unreachable' peers and routers started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(cond: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition on the agent's own state (no event to wait on from outside)."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def eventually(probe: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Like :func:`wait_until` for a condition read over HTTP."""
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_chunk(content: str | None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


@dataclass
class BackendState:
    """What a fake backend was asked, and the knobs a test turns."""

    kind: str
    health_status: int = 200
    requests: list[tuple[str, CIMultiDict[str], bytes]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, the stream pauses after its first chunk
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    drop_mid_stream: bool = False
    serve_metrics: bool = True
    emulator_gpus: list[dict[str, Any]] | None = None
    ollama_tags: list[dict[str, Any]] = field(default_factory=list)
    ollama_ps: list[dict[str, Any]] = field(default_factory=list)
    tokens: tuple[str, ...] = ("Hel", "lo", " world")
    models_asked: int = 0  # GET /v1/models answered (the generic kind's probe)
    streaming: int = 0  # streams being written now
    most_streaming: int = 0  # the most at once
    answering: asyncio.Event = field(default_factory=answering)  # cleared: answers nothing


class FakeBackend:
    """An app speaking one backend kind's API (paths and shapes from backends.md)."""

    def __init__(self, kind: str) -> None:
        self.state = BackendState(kind=kind)
        self.app = web.Application(middlewares=[self._answering])
        r = self.app.router
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/completions", self.chat)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_get("/v1/models", self.models)
        r.add_get("/_emulator/gpus", self.gpus)
        if kind == "vllm":
            r.add_get("/health", self.health)
            r.add_get("/metrics", self.metrics)
            r.add_get("/version", self.version)
        elif kind == "ollama":
            r.add_get("/", self.ollama_root)
            r.add_get("/api/tags", self.ollama_tags)
            r.add_get("/api/ps", self.ollama_ps)
            r.add_get("/api/version", self.version)
            r.add_post("/api/chat", self.ollama_native)
            r.add_post("/api/generate", self.ollama_native)
            r.add_post("/api/embed", self.ollama_embed)

    @web.middleware
    async def _answering(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        await self.state.answering.wait()
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.state.health_status)

    async def ollama_root(self, request: web.Request) -> web.Response:
        if self.state.health_status != 200:
            return web.Response(status=self.state.health_status)
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.9.1" if self.state.kind == "vllm" else "0.6.2"})

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.state.serve_metrics:
            raise web.HTTPNotFound()
        return web.Response(text=VLLM_METRICS, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        s = self.state
        s.models_asked += 1
        if s.kind != "ollama" and s.health_status != 200:
            return web.Response(status=s.health_status)
        if s.kind == "vllm":
            cards: list[dict[str, Any]] = [
                {
                    "id": name,
                    "object": "model",
                    "created": 1700000000,
                    "owned_by": "vllm",
                    "root": "meta-llama/Llama-3.1-8B-Instruct",
                    "parent": None,
                    "max_model_len": 8192,
                    "permission": [],
                }
                for name in ("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct")
            ]
            cards.append(
                {
                    "id": "sql-lora",
                    "object": "model",
                    "created": 1700000000,
                    "owned_by": "vllm",
                    "root": "/adapters/sql",
                    "parent": "llama-3.1-8b",
                    "max_model_len": None,
                    "permission": [],
                }
            )
        elif s.kind == "ollama":
            cards = [
                {"id": t["name"], "object": "model", "created": 1, "owned_by": "library"}
                for t in s.ollama_tags
            ]
        else:
            cards = [
                {
                    "id": "qwen2.5-7b-instruct-q4_k_m.gguf",
                    "object": "model",
                    "created": 1700000000,
                    "owned_by": "llamacpp",
                    "meta": {"n_ctx_train": 32768, "size": 4683074240},
                }
            ]
        return web.json_response({"object": "list", "data": cards})

    async def ollama_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.state.ollama_tags})

    async def ollama_ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.state.ollama_ps})

    async def ollama_native(self, request: web.Request) -> web.StreamResponse:
        return await ollama_native(request, self.state)

    async def ollama_embed(self, request: web.Request) -> web.Response:
        return await ollama_embed(request, self.state)

    async def gpus(self, request: web.Request) -> web.Response:
        if self.state.emulator_gpus is None:
            raise web.HTTPNotFound()
        return web.json_response({"gpus": self.state.emulator_gpus})

    async def embeddings(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "m",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    def _record(self, request: web.Request, body: bytes) -> None:
        self.state.requests.append((request.path, CIMultiDict(request.headers), body))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        s = self.state
        body = await request.read()
        self._record(request, body)
        payload = json.loads(body)
        if payload.get("model") == "missing":
            return web.json_response(
                {"error": "model 'missing' not found"}, status=404, headers={"X-Request-Id": "r1"}
            )
        if payload.get("model") == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                s.cancelled.set()
                raise
        if payload.get("model") == "truncate":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-1", "choi')
            assert request.transport is not None
            request.transport.abort()
            return resp
        if not payload.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": payload.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(s.tokens)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        s.streaming += 1
        s.most_streaming = max(s.most_streaming, s.streaming)
        try:
            await resp.write(chat_chunk(s.tokens[0], role=True))
            s.first_sent.set()
            if s.drop_mid_stream:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if s.gate is not None:
                await s.gate.wait()
            for token in s.tokens[1:]:
                await resp.write(chat_chunk(token))
            await resp.write(chat_chunk(None, finish="stop"))
            usage = (payload.get("stream_options") or {}).get("include_usage")
            if usage:
                await resp.write(
                    sse(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion.chunk",
                            "created": 1700000000,
                            "model": "m",
                            "choices": [],
                            "usage": {
                                "prompt_tokens": 5,
                                "completion_tokens": 10,
                                "total_tokens": 15,
                            },
                        }
                    )
                )
            await resp.write(b"data: [DONE]\n\n")
            s.last_sent.set()
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            s.cancelled.set()
            raise
        finally:
            s.streaming -= 1
        return resp


@dataclass
class FakeRouter:
    """A router's server-group API that records what the agent sends and validates it."""

    registrations: list[dict[str, Any]] = field(default_factory=list)
    reports: list[tuple[str, LoadReport]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def make_app(self) -> web.Application:
        app = web.Application()
        base = "/api/server-groups/{group}/nodes"
        app.router.add_post(base, self.register)
        app.router.add_put(base + "/{node_id}/report", self.report)
        app.router.add_delete(base + "/{node_id}", self.delete)
        return app

    def forget(self) -> None:
        """Simulate a restart: every node is unknown from now on."""
        self.nodes.clear()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, cond: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(cond)

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        registration = Registration.from_json(body)
        LoadReport.from_json(body["report"])
        node_id = f"node-{registration.name}"
        self.nodes[node_id] = registration.name
        self.registrations.append(body | {"group": request.match_info["group"]})
        await self._notify()
        return web.json_response(
            {"nodeId": node_id, "groupName": request.match_info["group"], "status": "healthy"},
            status=201,
        )

    async def report(self, request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        if node_id not in self.nodes:
            raise web.HTTPNotFound(text='{"error": "unknown node"}')
        self.reports.append((node_id, LoadReport.from_json(await request.json())))
        await self._notify()
        return web.json_response({"status": "healthy"})

    async def delete(self, request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        self.deletes.append(node_id)
        self.nodes.pop(node_id, None)
        await self._notify()
        return web.json_response({"status": "removed"})


ServerFactory = Callable[..., Awaitable[TestServer]]


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def agent_settings(backend: str, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "backend_url": backend,
        "host": "127.0.0.1",
        "port": 0,
        "name": "node-a",
        "gpu_source": "none",
        "report_interval_s": 0.05,
        "control_timeout_s": 1.0,
        "shutdown_timeout_s": 2.0,
    }
    values.update(overrides)
    return AgentSettings(**values)


@pytest.fixture
async def llamacpp(aiohttp_server: ServerFactory) -> tuple[FakeLlamaCpp, str]:
    fake = FakeLlamaCpp()
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)


@pytest.fixture
async def vllm(aiohttp_server: ServerFactory) -> tuple[FakeBackend, str]:
    fake = FakeBackend("vllm")
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)


@pytest.fixture
async def ollama(aiohttp_server: ServerFactory) -> tuple[FakeBackend, str]:
    fake = FakeBackend("ollama")
    fake.state.ollama_tags = [
        {
            "name": "llama3.1:8b",
            "model": "llama3.1:8b",
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 4920753328,
            "digest": "abc",
            "details": OLLAMA_TAG_DETAILS,
        },
        {
            "name": "mistral:latest",
            "model": "mistral:latest",
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 4113301824,
            "digest": "def",
            "details": OLLAMA_TAG_DETAILS,
        },
    ]
    fake.state.ollama_ps = [
        {
            "name": "llama3.1:8b",
            "model": "llama3.1:8b",
            "size": 6654289920,
            "digest": "abc",
            "details": OLLAMA_TAG_DETAILS,
            "expires_at": "2026-01-01T00:05:00Z",
            "size_vram": 6654289920,
            "context_length": 8192,
        }
    ]
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)


@pytest.fixture
async def generic(aiohttp_server: ServerFactory) -> tuple[FakeBackend, str]:
    fake = FakeBackend("openai")
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)


@pytest.fixture
async def router(aiohttp_server: ServerFactory) -> tuple[FakeRouter, str]:
    fake = FakeRouter()
    server = await aiohttp_server(fake.make_app())
    return fake, base_url(server)


@pytest.fixture
async def tgi(aiohttp_server: ServerFactory) -> tuple[FakeTgi, str]:
    fake = FakeTgi()
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)


@dataclass
class TritonServers:
    """A fake Triton: its HTTP endpoint and its separate metrics endpoint."""

    fake: FakeTriton
    url: str
    metrics_url: str


@pytest.fixture
async def triton(aiohttp_server: ServerFactory) -> TritonServers:
    fake = FakeTriton()
    server = await aiohttp_server(fake.app)
    metrics = await aiohttp_server(fake.metrics_app)
    return TritonServers(fake, base_url(server), base_url(metrics) + "/metrics")


@pytest.fixture
async def lmstudio(aiohttp_server: ServerFactory) -> tuple[FakeLmStudio, str]:
    fake = FakeLmStudio()
    server = await aiohttp_server(fake.app)
    return fake, base_url(server)
