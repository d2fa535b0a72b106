"""The vLLM face: exact stream framing, bodies, errors, health and metrics."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.emulator import RunningEmulator, serve

from .conftest import CHAT, VLLM_MODEL, sdk_chat_stream, sse_json, vllm_config


@pytest.fixture
async def vllm() -> AsyncIterator[RunningEmulator]:
    async with serve(vllm_config()) as running:
        yield running


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.read()


class TestChatStream:
    """A streamed chat answer is framed exactly as vLLM frames it."""

    async def test_framing_role_tokens_finish_usage_done(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {**CHAT, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}}
        async with http.post(vllm.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            raw = await resp.read()
        chunks = sse_json(raw)
        assert len(chunks) == 6  # role, 4 tokens, usage
        assert {c["id"] for c in chunks} == {chunks[0]["id"]}
        assert chunks[0]["id"].startswith("chatcmpl-")
        assert {c["created"] for c in chunks} == {chunks[0]["created"]}
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert all(c["model"] == VLLM_MODEL for c in chunks)
        assert chunks[0]["choices"] == [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
        assert [c["choices"][0]["delta"]["content"] for c in chunks[1:5]] == [
            " the", " quick", " brown", " fox",
        ]  # fmt: skip
        assert [c["choices"][0]["finish_reason"] for c in chunks[1:5]] == [None] * 3 + ["length"]
        assert "stop_reason" not in chunks[1]["choices"][0]
        assert chunks[4]["choices"][0]["stop_reason"] is None
        assert chunks[5]["choices"] == []
        prompt = chunks[5]["usage"]["prompt_tokens"]
        assert chunks[5]["usage"] == {
            "prompt_tokens": prompt, "total_tokens": prompt + 4, "completion_tokens": 4,
        }  # fmt: skip
        assert "usage" not in chunks[1]

    async def test_no_usage_chunk_unless_asked(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, raw = await post(http, vllm.url + "/v1/chat/completions", {**CHAT, "stream": True})
        chunks = sse_json(raw)
        assert status == 200
        assert len(chunks) == 17  # role chunk and 16 default tokens
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    async def test_tokens_arrive_spread_over_time(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config(tok_s=200.0, ttft_s=0.02)) as running:
            body = {**CHAT, "stream": True, "max_tokens": 12}
            stamps = []
            async with http.post(running.url + "/v1/chat/completions", json=body) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
        assert len(gaps) == 11
        # deadlines make the schedule a floor; a loaded machine can only make it later
        assert 0.9 * 11 / 200 <= sum(gaps) <= 3 * 11 / 200
        assert statistics.median(gaps) > 0.002


class TestNonStream:
    """Non-streamed answers carry the whole text and usage in vLLM's body shape."""

    async def test_chat_body(self, vllm: RunningEmulator, http: aiohttp.ClientSession) -> None:
        status, raw = await post(http, vllm.url + "/v1/chat/completions", {**CHAT, "max_tokens": 2})
        body = orjson.loads(raw)
        assert status == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == " the quick"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 2

    async def test_completions_stream(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"prompt": "Once upon", "stream": True, "max_tokens": 2}
        status, raw = await post(http, vllm.url + "/v1/completions", body)
        chunks = sse_json(raw)
        assert status == 200
        assert [c["choices"][0] for c in chunks] == [
            {"index": 0, "text": " the", "logprobs": None, "finish_reason": None,
             "stop_reason": None},
            {"index": 0, "text": " quick", "logprobs": None, "finish_reason": "length",
             "stop_reason": None},
        ]  # fmt: skip
        assert chunks[0]["object"] == "text_completion"
        assert chunks[0]["id"].startswith("cmpl-")


class TestErrors:
    """Errors use vLLM's envelope with an integer code, or FastAPI's detail for routes."""

    async def test_unknown_model_is_404(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, raw = await post(http, vllm.url + "/v1/chat/completions", {**CHAT, "model": "x"})
        assert status == 404
        assert orjson.loads(raw) == {
            "error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }

    @pytest.mark.parametrize(
        "body",
        [b"{not json", b'{"messages": 3}', b'{"model": "' + VLLM_MODEL.encode() + b'"}'],
    )
    async def test_bad_bodies_are_400(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession, body: bytes
    ) -> None:
        async with http.post(vllm.url + "/v1/chat/completions", data=body) as resp:
            error = (await resp.json())["error"]
        assert resp.status == 400
        assert (error["type"], error["code"], error["param"]) == ("Bad Request", 400, None)

    async def test_zero_max_tokens_is_400(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, raw = await post(http, vllm.url + "/v1/chat/completions", {**CHAT, "max_tokens": 0})
        assert status == 400
        assert orjson.loads(raw)["error"]["message"] == "max_tokens must be at least 1, got 0."

    async def test_context_overflow_is_400(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {**CHAT, "max_tokens": 9000}
        status, raw = await post(http, vllm.url + "/v1/chat/completions", body)
        assert status == 400
        assert "maximum context length is 8192 tokens" in orjson.loads(raw)["error"]["message"]

    async def test_embeddings_unsupported_for_a_generative_model(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, raw = await post(http, vllm.url + "/v1/embeddings", {"input": "hi"})
        assert status == 400
        assert orjson.loads(raw)["error"]["message"] == "The model does not support Embeddings API"

    async def test_unknown_route_is_fastapi_404(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(vllm.url + "/api/tags") as resp:
            assert (resp.status, await resp.json()) == (404, {"detail": "Not Found"})

    async def test_capped_queue_answers_503(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config(slots=1, max_queue=0, tok_s=50.0)) as running:
            url = running.url + "/v1/chat/completions"
            first = asyncio.create_task(post(http, url, {**CHAT, "max_tokens": 5}))
            await asyncio.sleep(0.05)
            status, raw = await post(http, url, CHAT)
            assert (await first)[0] == 200
        assert status == 503
        assert orjson.loads(raw)["error"]["code"] == 503


class TestInfoEndpoints:
    """Health, version and the model list answer in vLLM's shapes."""

    async def test_health_is_empty_200(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(vllm.url + "/health") as resp:
            assert (resp.status, await resp.read()) == (200, b"")
        async with http.get(vllm.url + "/version") as resp:
            assert await resp.json() == {"version": "0.11.0"}

    async def test_model_card(self, http: aiohttp.ClientSession) -> None:
        config = vllm_config(served_names=("llama-8b", "default"))
        async with serve(config) as running, http.get(running.url + "/v1/models") as resp:
            body = await resp.json()
        assert body["object"] == "list"
        assert [c["id"] for c in body["data"]] == ["llama-8b", "default"]
        card = body["data"][0]
        assert set(card) == {
            "id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission",
        }  # fmt: skip
        assert (card["owned_by"], card["root"], card["parent"]) == ("vllm", VLLM_MODEL, None)
        assert card["max_model_len"] == 8192
        assert card["permission"][0]["object"] == "model_permission"


class TestMetrics:
    """/metrics carries vLLM's series names and labels, and follows the engine."""

    async def test_names_labels_and_values(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config(slots=2, tok_s=100.0)) as running:
            url = running.url + "/v1/chat/completions"
            await post(http, url, {**CHAT, "max_tokens": 3})
            streams = [
                asyncio.create_task(post(http, url, {**CHAT, "max_tokens": 20})) for _ in range(3)
            ]
            await asyncio.sleep(0.08)
            async with http.get(running.url + "/metrics") as resp:
                text = await resp.text()
            await asyncio.gather(*streams)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {
            (s.name, s.labels.get("finished_reason")): s
            for f in families.values()
            for s in f.samples
        }
        assert samples["vllm:num_requests_running", None].value == 2
        assert samples["vllm:num_requests_waiting", None].value == 1
        assert 0 < samples["vllm:kv_cache_usage_perc", None].value <= 1
        assert samples["vllm:generation_tokens_total", None].value >= 3
        assert samples["vllm:prompt_tokens_total", None].value > 0
        assert samples["vllm:request_success_total", "length"].value == 1
        labels = samples["vllm:num_requests_running", None].labels
        assert labels == {"model_name": VLLM_MODEL, "engine": "0"}


class TestOpenAISdk:
    """The official openai SDK streams from the vLLM face."""

    async def test_sdk_streams_chat(self, vllm: RunningEmulator) -> None:
        text, completion_tokens = await sdk_chat_stream(vllm.url + "/v1", VLLM_MODEL, 5)
        assert (text, completion_tokens) == (" the quick brown fox jumps", 5)
