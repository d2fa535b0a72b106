"""Failover through a real router to nodes on real sockets: overload, request faults, node
faults, slots, and streams that end without an answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from router.app import REGISTRY, RunningRouter, serve
from router.registry import Node
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, report, run_app, running

CHAT = "/inference-cluster/v1/chat/completions"
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _chat(content: str = "hi", stream: bool = False) -> dict[str, Any]:
    return {
        "model": "m-small",
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    }


@contextlib.asynccontextmanager
async def scripted(name: str, answer: Answer) -> AsyncIterator[FakeNode]:
    """A node whose chat answers ``answer`` gives (every request is kept in ``seen``)."""
    node = FakeNode(name)

    async def chat(request: web.Request) -> web.StreamResponse:
        node.seen.append({"body": await request.json()})
        return await answer(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with run_app(app) as url:
        node.url = url
        yield node


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return answer


async def _ok(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    message = {"role": "assistant", "content": "fine"}
    return web.json_response(
        {"id": "c", "object": "chat.completion", "model": body["model"],
         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    )  # fmt: skip


def _node(router: RunningRouter, name: str) -> Node:
    group = router.app[REGISTRY].groups["inference-cluster"]
    return next(n for n in group.nodes.values() if n.name == name)


async def _post(
    session: aiohttp.ClientSession, router: RunningRouter, body: dict[str, Any]
) -> tuple[int, bytes, Any]:
    async with session.post(router.url + CHAT, json=body) as resp:
        return resp.status, await resp.read(), resp.headers


class TestOverload:
    """An overloaded node (429, 503) is passed over and noted busy, not broken."""

    @pytest.fixture
    async def router(self) -> AsyncIterator[RunningRouter]:
        """Reports are not missed within a test however slow the machine is, so only what the
        node answered can touch its health."""
        async with serve(router_settings(report_interval_s=30.0)) as running:
            yield running

    async def test_429_moves_to_the_next_node_and_marks_the_node_busy(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node's 429 before the first byte sends the request to the next node; the 429 node
        is noted busy with its breaker closed and its health untouched."""
        full = _json(429, {"error": "Model is overloaded", "error_type": "overloaded"})
        async with scripted("full", full) as a, running(FakeNode("free")) as b:
            await register(session, router.url, a)
            await register(session, router.url, b, in_flight=1)  # so "full" is tried first
            status, body, headers = await _post(session, router, _chat())
            assert status == 200, body
            assert headers["X-Inference-Node"] == "free"
            assert len(a.seen) == 1
            node = _node(router, "full")
            assert node.breaker_trips == 0
            assert node.failed_checks == 0
            assert node.busy_others is not None  # noted full until its next report

    async def test_every_node_overloaded_answers_with_retry_after(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """When every candidate is overloaded the client gets 503 in the OpenAI envelope with
        the soonest Retry-After a node named, and no node's breaker opens."""
        queue_full = _json(429, {"error": "Model is overloaded"}, {"Retry-After": "7"})
        busy = _json(503, {"error": "server busy, please try again."}, {"Retry-After": "3"})
        async with scripted("a", queue_full) as a, scripted("b", busy) as b:
            await register(session, router.url, a)
            await register(session, router.url, b)
            status, body, headers = await _post(session, router, _chat())
            assert (len(a.seen), len(b.seen)) == (1, 1)
            assert _node(router, "a").breaker_trips == _node(router, "b").breaker_trips == 0
        assert status == 503
        assert headers["Retry-After"] == "3"
        error = orjson.loads(body)["error"]
        assert error["code"] == "overloaded"
        assert set(error) == {"message", "type", "param", "code"}

    async def test_every_node_429_answers_429(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """When every candidate said 429 the client gets 429 with Retry-After."""
        full = _json(429, {"error": "Model is overloaded", "error_type": "overloaded"})
        async with scripted("a", full) as a, scripted("b", full) as b:
            await register(session, router.url, a)
            await register(session, router.url, b)
            status, body, headers = await _post(session, router, _chat())
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert orjson.loads(body)["error"]["type"] == "rate_limit_error"


async def _rejects_bad_prompts(request: web.Request) -> web.StreamResponse:
    """A backend that fails a prompt it cannot handle with an unclear 500."""
    body = await request.json()
    if body["messages"][0]["content"] == "poison":
        error = {"message": "tokenizer failed on input", "type": "InternalServerError", "code": 500}
        return web.json_response({"error": error}, status=500)
    return await _ok(request)


class TestRequestFaults:
    """A request that fails the same way on two nodes is the client's error, and breaks nothing."""

    async def test_same_500_from_two_nodes_is_answered_and_opens_no_breaker(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The same 500 from two nodes reaches the client as the node's error; neither node's
        breaker opens, and both take the next request."""
        async with (
            scripted("a", _rejects_bad_prompts) as a,
            scripted("b", _rejects_bad_prompts) as b,
        ):
            await register(session, router.url, a)
            await register(session, router.url, b)
            status, body, _ = await _post(session, router, _chat("poison"))
            assert status == 500
            assert orjson.loads(body)["error"]["message"] == "tokenizer failed on input"
            assert (len(a.seen), len(b.seen)) == (1, 1)
            for name in ("a", "b"):
                node = _node(router, name)
                assert (node.breaker_trips, node.failed_checks) == (0, 0)
            for _ in range(2):
                status, body, _ = await _post(session, router, _chat())
                assert status == 200, body

    async def test_a_500_that_says_invalid_input_is_answered_at_once(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A 500 whose body says the input is invalid goes to the client as a 400 after one
        attempt, and opens no breaker."""
        error = {"message": "maximum context length exceeded", "type": "BadRequestError"}
        invalid = _json(500, {"error": {**error, "param": None, "code": 400}})
        async with scripted("a", invalid) as a, scripted("b", invalid) as b:
            await register(session, router.url, a)
            await register(session, router.url, b)
            status, body, headers = await _post(session, router, _chat())
            assert len(a.seen) + len(b.seen) == 1
            assert _node(router, headers["X-Inference-Node"]).breaker_trips == 0
        assert status == 400
        assert orjson.loads(body)["error"]["message"] == "maximum context length exceeded"

    async def test_a_500_then_an_answer_elsewhere_opens_the_first_breaker(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A 500 from one node and an answer from the next is the first node's fault: its
        breaker opens."""
        boom = _json(500, {"error": {"message": "CUDA error", "type": "InternalServerError"}})
        async with scripted("sick", boom) as a, scripted("well", _ok) as b:
            await register(session, router.url, a)
            await register(session, router.url, b, in_flight=1)  # so "sick" is tried first
            status, body, _ = await _post(session, router, _chat())
            assert status == 200, body
            assert _node(router, "sick").breaker_trips == 1
            assert _node(router, "well").breaker_trips == 0


class TestNodeFaults:
    """Faults of the node itself still take it out of rotation."""

    async def test_connection_refused_opens_the_breaker(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node that refuses the connection has its breaker opened; the request is served
        elsewhere."""
        async with running(FakeNode("gone")) as gone:
            await register(session, router.url, gone)
        async with running(FakeNode("alive")) as alive:
            await register(session, router.url, alive, in_flight=1)  # so "gone" is tried first
            status, body, headers = await _post(session, router, _chat())
            assert status == 200, body
            assert headers["X-Inference-Node"] == "alive"
            assert _node(router, "gone").breaker_trips == 1

    async def test_client_leaving_during_a_failover_frees_the_slot(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A client that leaves while the second node is being tried leaves no slot taken on
        either node."""
        async with running(FakeNode("gone")) as gone:
            await register(session, router.url, gone)
        async with running(FakeNode("slow", mode="hang")) as slow:
            await register(session, router.url, slow, in_flight=1)  # so "gone" is tried first
            task = asyncio.create_task(_post(session, router, _chat()))
            async with asyncio.timeout(5):
                while not slow.seen:  # noqa: ASYNC110 - the fake node exposes no event for this
                    await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with asyncio.timeout(5):
                while _node(router, "slow").in_flight:  # noqa: ASYNC110 - nor does the router
                    await asyncio.sleep(0.01)
            assert _node(router, "gone").in_flight == 0


def _stream(*events: bytes) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
        await resp.write_eof()
        return resp

    return answer


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'  # noqa: E501
TOOL = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}]}\n\n'  # noqa: E501
TOOL_END = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
DONE = b"data: [DONE]\n\n"


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class TestEmptyStreams:
    """A stream with no token in it is never a silent 200: it is a failed attempt, and when no
    node is left the client gets an error answer."""

    async def _relayed(
        self, router: RunningRouter, session: aiohttp.ClientSession, *events: bytes
    ) -> tuple[int, bytes, str]:
        async with scripted("n", _stream(*events)) as node:
            await register(session, router.url, node)
            status, raw, _ = await _post(session, router, _chat(stream=True))
        async with session.get(router.url + "/metrics") as resp:
            return status, raw, await resp.text()

    async def test_done_with_nothing_before_it_is_an_error_answer(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream of only [DONE] from the only node is answered 502 in the OpenAI envelope,
        counted as a retry that closed before its first token, not as a cut stream."""
        status, raw, metrics = await self._relayed(router, session, DONE)
        assert status == 502
        assert set(orjson.loads(raw)["error"]) == {"message", "type", "param", "code"}
        assert _counter(metrics, "router_retries_total", reason="closed_before_first_token") == 1
        assert _counter(metrics, "router_streams_cut_total") == 0

    async def test_no_content_and_no_finish_reason_is_an_error_answer(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream whose only event names the role, then [DONE], is a 502, not a 200."""
        status, raw, _ = await self._relayed(router, session, ROLE, DONE)
        assert status == 502
        assert "before its first token" in orjson.loads(raw)["error"]["message"]

    async def test_an_empty_body_is_an_error_answer(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream that ends with no bytes at all is a 502."""
        status, _, _ = await self._relayed(router, session)
        assert status == 502

    async def test_a_tool_call_stream_without_content_is_relayed_as_it_is(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream with a tool call and its finish reason but no text is an answer: no error."""
        status, raw, metrics = await self._relayed(router, session, ROLE, TOOL, TOOL_END, DONE)
        assert status == 200
        events = [e for e in raw.decode().split("\n\n") if e]
        assert events == [e.decode().strip() for e in (ROLE, TOOL, TOOL_END, DONE)]
        assert _counter(metrics, "router_streams_cut_total") == 0


async def test_an_empty_ndjson_stream_is_an_error_answer(
    session: aiohttp.ClientSession,
) -> None:
    """An Ollama-native stream with nothing in it is answered with an error status, not a
    silent 200."""

    async def empty(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/chat", empty)
    async with serve(router_settings()) as router, run_app(app) as url:
        registration = {
            "name": "o",
            "baseUrl": url,
            "healthUrl": url,
            "report": {**report(("m-small",)), "backendKind": "ollama"},
        }
        nodes = router.url + "/api/server-groups/inference-cluster/nodes"
        async with session.post(nodes, json=registration) as resp:
            assert resp.status in (200, 201), await resp.text()
        chat = {"model": "m-small", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(router.url + "/inference-cluster/api/chat", json=chat) as resp:
            assert resp.status == 502
            assert "error" in orjson.loads(await resp.read())
