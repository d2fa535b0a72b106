"""Failover until the first token: a node that answered its headers but no token yet has sent
the client nothing it can use, so it is passed over like one that never answered."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from router.app import REGISTRY, RunningRouter, serve
from router.registry import Node
from router.settings import Timeouts
from tests.conftest import router_settings
from tests.fakes import register, script, scripted

CHAT = "/inference-cluster/v1/chat/completions"


def chunk(content: str | None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    event = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m-small",
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


ROLE = chunk("", role="assistant")
DONE = b"data: [DONE]\n\n"
WHOLE = (ROLE, chunk("fine"), chunk(" thanks", "stop"), DONE)


def chat(stream: bool = True) -> dict[str, Any]:
    return {
        "model": "m-small",
        "stream": stream,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    }


def counter(metrics: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def node_named(router: RunningRouter, name: str) -> Node:
    group = router.app[REGISTRY].groups["inference-cluster"]
    return next(n for n in group.nodes.values() if n.name == name)


def text_of(raw: bytes) -> str:
    text = ""
    for event in raw.decode().split("\n\n"):
        payload = event.removeprefix("data: ").strip()
        if payload and payload != "[DONE]":
            for choice in orjson.loads(payload).get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


async def metrics_of(session: aiohttp.ClientSession, router: RunningRouter) -> str:
    async with session.get(router.url + "/metrics") as resp:
        return await resp.text()


class TestBeforeTheFirstToken:
    """Headers, then nothing usable: the next node serves the request, the client never knows."""

    async def test_a_node_that_closes_after_its_headers_is_passed_over(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node that sends its headers and role chunk, then dies, is retried on the next node:
        the client gets that node's whole answer, the dead node's breaker opens, and the retry
        is counted with its reason."""
        async with (
            scripted("dies", script(ROLE, None)) as dies,
            scripted("well", script(*WHOLE)) as well,
        ):
            await register(session, router.url, dies)
            await register(session, router.url, well, in_flight=1)  # so "dies" is tried first
            async with session.post(router.url + CHAT, json=chat()) as resp:
                status, raw, served_by = resp.status, await resp.read(), resp.headers
            assert (status, served_by["X-Inference-Node"]) == (200, "well")
            assert len(dies.seen) == 1
            assert node_named(router, "dies").breaker_trips == 1
            metrics = await metrics_of(session, router)
        assert text_of(raw) == "fine thanks"
        assert raw.count(b'"role"') == 1
        assert b"error" not in raw
        reason = "closed_before_first_token"
        assert counter(metrics, "router_retries_total", node="dies", reason=reason) == 1
        assert counter(metrics, "router_streams_cut_total") == 0

    async def test_a_node_that_stalls_before_its_first_token_is_passed_over(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A node whose first token does not come within the idle bound is passed over."""
        bounds = Timeouts(connect_s=1.0, first_byte_s=3.0, idle_s=0.3, total_s=30.0)
        async with (
            serve(router_settings(timeouts=bounds)) as router,
            scripted("stalls", script(ROLE, 5.0, *WHOLE[1:])) as stalls,
            scripted("well", script(*WHOLE)) as well,
        ):
            await register(session, router.url, stalls)
            await register(session, router.url, well, in_flight=1)
            async with session.post(router.url + CHAT, json=chat()) as resp:
                assert (resp.status, resp.headers["X-Inference-Node"]) == (200, "well")
                assert text_of(await resp.read()) == "fine thanks"
            metrics = await metrics_of(session, router)
        reason = "timeout_before_first_token"
        assert counter(metrics, "router_retries_total", node="stalls", reason=reason) == 1

    async def test_an_overload_event_in_place_of_the_first_token_moves_on(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A 200 stream whose first event says the node is overloaded (TGI's way) is an
        overloaded node: passed over and noted busy, its breaker closed."""
        full = b'data:{"error":"Model is overloaded","error_type":"overloaded"}\n\n'
        async with (
            scripted("full", script(full)) as full_node,
            scripted("well", script(*WHOLE)) as well,
        ):
            await register(session, router.url, full_node)
            await register(session, router.url, well, in_flight=1)
            async with session.post(router.url + CHAT, json=chat()) as resp:
                assert (resp.status, resp.headers["X-Inference-Node"]) == (200, "well")
            node = node_named(router, "full")
            assert (node.breaker_trips, node.busy_others is not None) == (0, True)

    async def test_a_request_error_event_in_place_of_the_first_token_is_a_400(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream whose first event is an error that says the request is at fault reaches
        the client as a 400 in the OpenAI envelope, after one attempt."""
        error = {
            "message": "prompt too long",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
        bad = b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE
        async with scripted("a", script(bad)) as a, scripted("b", script(bad)) as b:
            await register(session, router.url, a)
            await register(session, router.url, b)
            async with session.post(router.url + CHAT, json=chat()) as resp:
                status, body = resp.status, await resp.json()
            assert len(a.seen) + len(b.seen) == 1
        assert status == 400
        assert body["error"]["message"] == "prompt too long"


async def test_headers_wait_for_the_first_token(
    router: RunningRouter, session: aiohttp.ClientSession
) -> None:
    """The client's status line and headers come with the first token, not with the node's
    headers: until then the node may still fail and the request go elsewhere."""
    async with scripted("slow", script(ROLE, 0.4, *WHOLE[1:])) as slow:
        await register(session, router.url, slow)
        started = time.monotonic()
        async with session.post(router.url + CHAT, json=chat()) as resp:
            headers_after = time.monotonic() - started
            assert resp.status == 200
            assert text_of(await resp.read()) == "fine thanks"
    assert headers_after >= 0.35
