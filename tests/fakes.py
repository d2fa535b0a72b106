"""Small in-test peers on real sockets: a fake node (agent + backend in one) for router tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web


@dataclass
class FakeNode:
    """An OpenAI-speaking node whose behaviour a test sets: chunks, delays, failures."""

    name: str
    models: tuple[str, ...] = ("m-small",)
    chunks: int = 4
    chunk_delay_s: float = 0.0
    pad: int = 0  # extra characters in each streamed token, to make big chunks
    mode: str = "ok"  # ok | error_500 | error_503 | die_mid_stream | hang | bad_request
    seen: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    cancelled: int = 0
    url: str = ""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _bump(self, active: int = 0, cancelled: int = 0) -> None:
        async with self.changed:
            self.active += active
            self.cancelled += cancelled
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[FakeNode], bool]) -> None:
        """Wait until ``predicate(self)`` holds, woken by each change of the counters."""
        async with asyncio.timeout(5.0), self.changed:
            await self.changed.wait_for(lambda: predicate(self))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body, "t": time.monotonic()})
        if self.mode == "error_500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.mode == "error_503":
            return web.json_response({"error": "server busy"}, status=503)
        if self.mode == "bad_request":
            return web.Response(status=400, text="plain text problem")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        await self._bump(active=1)
        try:
            if not body.get("stream"):
                await asyncio.sleep(self.chunk_delay_s * self.chunks)
                return web.json_response(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "node": self.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "hi " * self.chunks},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(self.chunks):
                if self.mode == "die_mid_stream" and i == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": f"t{i} " + "x" * self.pad},
                            "finish_reason": "stop" if i == self.chunks - 1 else None,
                        }
                    ],
                }
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await asyncio.sleep(self.chunk_delay_s)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            await asyncio.shield(self._bump(cancelled=1))
            raise
        finally:
            await asyncio.shield(self._bump(active=-1))


@contextlib.asynccontextmanager
async def run_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def in_background(work: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run ``work()`` as a task while the block runs; cancelled at its end, where an error it
    raised (a failed assertion) comes out."""
    task = asyncio.create_task(work())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def scripted(name: str, answer: Answer) -> AsyncIterator[FakeNode]:
    """A node whose chat and completions answer what ``answer`` gives; each request's body is
    kept in ``seen``."""
    node = FakeNode(name)

    async def handle(request: web.Request) -> web.StreamResponse:
        node.seen.append({"body": await request.json()})
        return await answer(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_post("/v1/completions", handle)
    async with run_app(app) as url:
        node.url = url
        yield node


def script(*steps: bytes | float | None) -> Answer:
    """A stream answer: each bytes step is written, a number sleeps that long, and None drops
    the connection there (a node that died); the body ends after the last step."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for step in steps:
            if step is None:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                await resp.write(step)
        await resp.write_eof()
        return resp

    return answer


@contextlib.asynccontextmanager
async def running(node: FakeNode) -> AsyncIterator[FakeNode]:
    async with run_app(node.app()) as url:
        node.url = url
        yield node


def report(
    models: tuple[str, ...],
    *,
    seq: int = 1,
    in_flight: int = 0,
    health: str = "ok",
    slots: int = 4,
    kind: str = "vllm",
) -> dict[str, Any]:
    return {
        "seq": seq,
        "sentAt": time.time(),
        "backendKind": kind,
        "backendHealth": health,
        "inFlight": in_flight,
        "models": [{"id": m, "loaded": True, "maxParallel": slots} for m in models],
        "gpus": [],
    }


async def register(
    session: aiohttp.ClientSession,
    router_url: str,
    node: FakeNode,
    group: str = "inference-cluster",
    **report_kw: Any,
) -> str:
    body = {
        "name": node.name,
        "baseUrl": node.url,
        "healthUrl": f"{node.url}/health",
        "weight": 1,
        "metadata": {},
        "report": report(node.models, **report_kw),
    }
    async with session.post(f"{router_url}/api/server-groups/{group}/nodes", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return str((await resp.json())["nodeId"])


async def send_report(
    session: aiohttp.ClientSession,
    router_url: str,
    node_id: str,
    node: FakeNode,
    group: str = "inference-cluster",
    **report_kw: Any,
) -> int:
    url = f"{router_url}/api/server-groups/{group}/nodes/{node_id}/report"
    async with session.put(url, json=report(node.models, **report_kw)) as resp:
        return resp.status
