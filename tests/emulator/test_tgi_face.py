"""The TGI face: ``data:`` without a space, native and OpenAI streams, /info, metrics, 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import RunningEmulator, serve

from .conftest import (
    CHAT,
    VLLM_MODEL,
    eventually,
    fast_config,
    metric_samples,
    post_raw,
    sdk_chat_stream,
    set_fault,
    sse_events,
    sse_json,
)

FINGERPRINT_PREFIX = "3.3.6-"


@pytest.fixture
async def tgi() -> AsyncIterator[RunningEmulator]:
    async with serve(fast_config("tgi")) as running:
        yield running


def tight_events(raw: bytes) -> list[dict[str, Any]]:
    """Events of a stream that must be ``data:{...}`` and must not end with ``[DONE]``."""
    events = sse_events(raw, b"data:")
    assert b"[DONE]" not in raw
    return [orjson.loads(e) for e in events]


class TestGenerateStream:
    """/generate_stream writes data:{json} per token, the full text last, and no [DONE]."""

    async def test_raw_framing_and_last_event(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"inputs": "Hello there", "parameters": {"max_new_tokens": 3, "details": True}}
        status, raw, headers = await post_raw(http, tgi.url + "/generate_stream", body)
        assert (status, headers["Content-Type"]) == (200, "text/event-stream")
        assert headers["x-compute-type"] == "gpu+optimized"
        assert raw.startswith(b'data:{"index":1,"token":{')
        events = tight_events(raw)
        assert [e["index"] for e in events] == [1, 2, 3]
        assert [e["token"]["text"] for e in events] == [" the", " quick", " brown"]
        assert set(events[0]["token"]) == {"id", "text", "logprob", "special"}
        assert [e["generated_text"] for e in events[:2]] == [None, None]
        assert [e["details"] for e in events[:2]] == [None, None]
        assert events[2]["generated_text"] == " the quick brown"
        assert events[2]["details"] == {
            "finish_reason": "length", "generated_tokens": 3, "seed": None, "input_length": 3,
        }  # fmt: skip

    async def test_eos_and_no_details(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        _, raw, _ = await post_raw(http, tgi.url + "/generate_stream", {"inputs": "x"})
        events = tight_events(raw)
        assert len(events) == 16
        assert events[-1]["details"] is None
        assert events[-1]["generated_text"].startswith(" the quick")

    async def test_error_mid_stream_is_an_event(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("tgi")) as running:
            await set_fault(http, running.url, mode="error_mid_stream", after=2)
            body = {"inputs": "x", "parameters": {"max_new_tokens": 5}}
            status, raw, _ = await post_raw(http, running.url + "/generate_stream", body)
        events = tight_events(raw)
        assert status == 200
        assert len(events) == 3
        assert events[-1]["error_type"] == "generation"
        assert events[-1]["error"].startswith("Request failed during generation: ")


class TestGenerate:
    """/generate answers one body with details and TGI's timing headers; / wraps it in a list."""

    async def test_body_details_and_headers(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2, "details": True}}
        status, raw, headers = await post_raw(http, tgi.url + "/generate", body)
        answer = orjson.loads(raw)
        assert status == 200
        assert answer["generated_text"] == " the quick"
        details = answer["details"]
        assert (details["finish_reason"], details["generated_tokens"]) == ("length", 2)
        assert [t["text"] for t in details["tokens"]] == [" the", " quick"]
        assert headers["x-generated-tokens"] == "2"
        for name in ("x-compute-time", "x-queue-time", "x-inference-time", "x-time-per-token"):
            assert headers[name].isdigit()

    async def test_compat_route_and_full_text(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "return_full_text": True}}
        _, raw, _ = await post_raw(http, tgi.url + "/", body)
        assert orjson.loads(raw) == [{"generated_text": "Hi the"}]
        _, raw, _ = await post_raw(http, tgi.url + "/", {**body, "stream": True})
        assert tight_events(raw)[-1]["generated_text"] == "Hi the"


class TestOpenAIRoutes:
    """Chat and completions keep TGI's quirks: id "", data: without space, usage, [DONE]."""

    async def test_chat_stream_raw_framing(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {**CHAT, "stream": True, "max_tokens": 2, "stream_options": {"include_usage": True}}
        status, raw, _ = await post_raw(http, tgi.url + "/v1/chat/completions", body)
        assert status == 200
        assert raw.startswith(b'data:{"object":"chat.completion.chunk","id":"",')
        assert raw.endswith(b"\n\ndata:[DONE]\n\n")
        chunks = sse_json(raw, b"data:")
        assert len(chunks) == 3  # two tokens, then usage
        assert all(c["model"] == VLLM_MODEL and c["id"] == "" for c in chunks)
        assert chunks[0]["system_fingerprint"].startswith(FINGERPRINT_PREFIX)
        assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
            {"role": "assistant", "content": " the"},
            {"role": "assistant", "content": " quick"},
        ]
        assert [c["choices"][0]["finish_reason"] for c in chunks[:2]] == [None, "length"]
        assert [c["usage"] for c in chunks[:2]] == [None, None]
        assert chunks[2]["choices"] == []
        assert chunks[2]["usage"]["completion_tokens"] == 2

    @pytest.mark.parametrize("model", ["tgi", None, "some-lora-adapter"])
    async def test_any_model_name_answers_as_the_base_model(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession, model: str | None
    ) -> None:
        body: dict[str, Any] = {**CHAT, "max_tokens": 1}
        if model is not None:
            body["model"] = model
        status, raw, _ = await post_raw(http, tgi.url + "/v1/chat/completions", body)
        answer = orjson.loads(raw)
        assert status == 200
        assert (answer["object"], answer["model"], answer["id"]) == (
            "chat.completion", VLLM_MODEL, "",
        )  # fmt: skip
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": " the"}
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 1

    async def test_completions_stream_quirks(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"prompt": "Once", "stream": True, "max_tokens": 2}
        _, raw, _ = await post_raw(http, tgi.url + "/v1/completions", body)
        chunks = sse_json(raw, b"data:")
        assert [c["choices"][0]["finish_reason"] for c in chunks] == ["", "length"]
        assert "usage" not in chunks[0]
        assert chunks[1]["usage"]["completion_tokens"] == 2
        assert all(c["object"] == "text_completion" for c in chunks)

    @pytest.mark.parametrize(
        ("body", "error_type"),
        [
            ({"prompt": "x", "suffix": "y"}, "suffix not supported"),
            ({"prompt": ["a", "b"]}, "batch size exceeded"),
        ],
    )
    async def test_completions_refusals(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession, body: Any, error_type: str
    ) -> None:
        status, raw, _ = await post_raw(http, tgi.url + "/v1/completions", body)
        assert status == 422
        assert orjson.loads(raw)["error_type"] == error_type

    async def test_openai_sdk_streams(self, tgi: RunningEmulator) -> None:
        text, completion_tokens = await sdk_chat_stream(tgi.url + "/v1", "tgi", 4)
        assert (text, completion_tokens) == (" the quick brown fox", 4)


class TestHealthAndInfo:
    """Health is an empty 200 or TGI's 503 body; /info and /v1/models describe the one model."""

    async def test_health_and_unhealthy(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("tgi")) as running:
            for path in ("/health", "/", "/ping"):
                async with http.get(running.url + path) as resp:
                    assert (resp.status, await resp.read()) == (200, b"")
            await set_fault(http, running.url, mode="error_500")
            async with http.get(running.url + "/health") as resp:
                assert resp.status == 503
                assert await resp.read() == b'{"error":"unhealthy","error_type":"healthcheck"}'

    async def test_info_fields_and_models(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(tgi.url + "/info") as resp:
            info = await resp.json()
        assert list(info) == [
            "model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests",
            "max_best_of", "max_stop_sequences", "max_input_tokens", "max_total_tokens",
            "validation_workers", "max_client_batch_size", "router", "version", "sha",
            "docker_label",
        ]  # fmt: skip
        assert (info["model_id"], info["max_concurrent_requests"]) == (VLLM_MODEL, 128)
        assert (info["max_total_tokens"], info["version"]) == (8192, "3.3.6")
        async with http.get(tgi.url + "/v1/models") as resp:
            assert await resp.json() == {
                "object": "list",
                "data": [
                    {"id": VLLM_MODEL, "object": "model", "created": 0, "owned_by": VLLM_MODEL}
                ],
            }
        async with http.get(tgi.url + "/api/tags") as resp:
            assert (resp.status, await resp.read()) == (404, b"")


class TestErrors:
    """Errors are {"error","error_type"}; overload is 429, or an event on a started stream."""

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"max_new_tokens": 0},
             "Input validation error: `max_new_tokens` must be strictly positive"),
            ({"max_new_tokens": 9000}, "Input validation error: `inputs` tokens + `max_new_tokens` "
             "must be <= 8192. Given: 1 `inputs` tokens and 9000 `max_new_tokens`"),
        ],
    )  # fmt: skip
    async def test_validation_is_422(
        self, tgi: RunningEmulator, http: aiohttp.ClientSession, params: Any, message: str
    ) -> None:
        body = {"inputs": "hi", "parameters": params}
        status, raw, _ = await post_raw(http, tgi.url + "/generate", body)
        assert status == 422
        assert orjson.loads(raw) == {"error": message, "error_type": "validation"}

    @pytest.mark.parametrize(
        ("body", "status", "start"),
        [
            (b"{oops", 400, b"Failed to parse the request body as JSON"),
            ({"parameters": {}}, 422, b"Failed to deserialize the JSON body into the target type"),
        ],
    )
    async def test_bad_bodies_get_axum_plain_text(
        self,
        tgi: RunningEmulator,
        http: aiohttp.ClientSession,
        body: Any,
        status: int,
        start: bytes,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with http.post(tgi.url + "/generate", data=data, headers=headers) as resp:
            assert resp.status == status
            assert resp.content_type == "text/plain"
            assert (await resp.read()).startswith(start)

    async def test_overload_is_429_or_an_event(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("tgi", max_queue=1, tok_s=50.0)) as running:
            busy = asyncio.create_task(
                post_raw(
                    http,
                    running.url + "/generate",
                    {"inputs": "x", "parameters": {"max_new_tokens": 5}},
                )
            )
            await eventually(lambda: running.engine.in_flight == 1)
            plain = await post_raw(http, running.url + "/generate", {"inputs": "x"})
            stream = await post_raw(http, running.url + "/generate_stream", {"inputs": "x"})
            chat = await post_raw(
                http, running.url + "/v1/chat/completions", {**CHAT, "stream": True}
            )
            assert (await busy)[0] == 200
            async with http.get(running.url + "/metrics") as resp:
                samples = metric_samples(await resp.text())
        assert plain[0] == 429
        assert orjson.loads(plain[1]) == {
            "error": "Model is overloaded",
            "error_type": "overloaded",
        }
        assert stream[0] == 200
        assert stream[1] == b'data:{"error":"Model is overloaded","error_type":"overloaded"}\n\n'
        assert chat[0] == 200
        assert chat[1] == (
            b'data:{"error":{"message":"Model is overloaded","http_status_code":422}}\n\n'
            b"data:[DONE]\n\n"
        )
        assert samples["tgi_request_failure_total", (("err", "overloaded"),)] == 3


class TestMetrics:
    """/metrics has TGI's names as metrics-rs writes them: no _total, a blank line per family."""

    async def test_names_values_and_format(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("tgi", slots=2, tok_s=100.0)) as running:
            await post_raw(
                http,
                running.url + "/generate",
                {"inputs": "x", "parameters": {"max_new_tokens": 2}},
            )
            streams = [
                asyncio.create_task(
                    post_raw(
                        http,
                        running.url + "/generate",
                        {"inputs": "x", "parameters": {"max_new_tokens": 20}},
                    )
                )
                for _ in range(3)
            ]
            await eventually(lambda: running.engine.in_flight == 3 and running.engine.waiting == 1)
            async with http.get(running.url + "/metrics") as resp:
                text = await resp.text()
            await asyncio.gather(*streams)
        assert "_total " not in text
        assert "_total{" not in text
        assert "# TYPE tgi_request_count counter\ntgi_request_count 4\n\n" in text
        assert "# HELP tgi_queue_size Current queue size\n" in text
        samples = metric_samples(text)
        assert samples["tgi_queue_size", ()] == 1
        assert samples["tgi_batch_current_size", ()] == 2
        assert samples["tgi_batch_max_total_tokens", ()] == 2 * 2048
        assert samples["tgi_request_success_total", ()] == 1
        assert samples["tgi_request_duration_count", ()] == 1
        assert samples["tgi_request_generated_tokens_sum", ()] == 2
