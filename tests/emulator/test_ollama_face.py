"""The Ollama face: native NDJSON, load/unload, /api/ps, errors and the OpenAI-compatible face."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import RunningEmulator, serve

from .conftest import CHAT, ollama_config, sse_json

MODEL = "llama3.1:8b"
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
async def ollama() -> AsyncIterator[RunningEmulator]:
    async with serve(ollama_config()) as running:
        yield running


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, bytes, str]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    return [orjson.loads(line) for line in raw[:-1].split(b"\n")]


class TestNativeStream:
    """/api/chat and /api/generate stream NDJSON and close with a done object."""

    async def test_chat_ndjson_and_final_object(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"model": MODEL, **CHAT, "options": {"num_predict": 3}}
        status, raw, ctype = await post(http, ollama.url + "/api/chat", body)
        assert (status, ctype) == (200, "application/x-ndjson")
        lines = ndjson(raw)
        assert len(lines) == 4
        assert lines[0]["message"] == {"role": "assistant", "content": " the"}
        assert [list(x) for x in lines[:3]] == [["model", "created_at", "message", "done"]] * 3
        assert all(x["done"] is False and x["model"] == MODEL for x in lines[:3])
        datetime.fromisoformat(lines[0]["created_at"])
        final = lines[-1]
        assert list(final) == [
            "model", "created_at", "message", "done_reason", "done", "total_duration",
            "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
            "eval_duration",
        ]  # fmt: skip
        assert (final["done"], final["done_reason"], final["eval_count"]) == (True, "length", 3)
        assert final["message"] == {"role": "assistant", "content": ""}
        assert all(isinstance(final[k], int) and final[k] > 0 for k in DURATIONS)
        # nanoseconds: a 10 ms prefill is about 1e7
        assert 5e6 < final["prompt_eval_duration"] < 5e8
        assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]

    async def test_generate_stream_false_is_one_object(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"model": MODEL, "prompt": "hello", "stream": False}
        status, raw, ctype = await post(http, ollama.url + "/api/generate", body)
        answer = orjson.loads(raw)
        assert (status, ctype) == (200, "application/json; charset=utf-8")
        assert answer["response"].startswith(" the quick")
        assert (answer["done"], answer["done_reason"], answer["eval_count"]) == (True, "stop", 16)
        assert isinstance(answer["context"], list)

    async def test_untagged_name_means_latest(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config(models=("llama3.1:8b", "mistral:7b"))) as running:
            status, _, _ = await post(http, running.url + "/api/chat", {"model": "mistral", **CHAT})
        assert status == 404  # "mistral" means "mistral:latest", not "mistral:7b"


class TestLoadAndUnload:
    """Empty requests load or unload a model; a cold model shows its load time."""

    async def test_preload_unload_and_cold_start(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        config = ollama_config(
            models=("small-a",), capacity_file=capacity_file, preload=(), load_time_scale=0.05
        )
        async with serve(config) as running:
            url = running.url
            status, raw, _ = await post(http, url + "/api/generate", {"model": "small-a"})
            loaded = orjson.loads(raw)
            async with http.get(url + "/api/ps") as resp:
                ps_after_load = (await resp.json())["models"]
            body = {"model": "small-a", "keep_alive": 0}
            _, raw, _ = await post(http, url + "/api/chat", body)
            unloaded = orjson.loads(raw)
            async with http.get(url + "/api/ps") as resp:
                ps_after_unload = (await resp.json())["models"]
            body = {"model": "small-a:latest", **CHAT, "stream": False, "keep_alive": "1m"}
            _, raw, _ = await post(http, url + "/api/chat", body)
            cold = orjson.loads(raw)
        assert status == 200
        assert loaded == {
            "model": "small-a", "created_at": loaded["created_at"], "response": "", "done": True,
            "done_reason": "load",
        }  # fmt: skip
        assert [m["name"] for m in ps_after_load] == ["small-a:latest"]
        assert unloaded["done_reason"] == "unload"
        assert unloaded["message"] == {"role": "assistant", "content": ""}
        assert ps_after_unload == []
        assert cold["load_duration"] == pytest.approx(0.1e9, rel=0.5)  # load_s 2.0 x 0.05

    async def test_bad_keep_alive_is_400(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"model": MODEL, **CHAT, "keep_alive": "5 minutes"}
        status, raw, _ = await post(http, ollama.url + "/api/chat", body)
        assert status == 400
        assert orjson.loads(raw) == {"error": 'time: invalid duration "5 minutes"'}


class TestProcessList:
    """/api/ps lists loaded models with VRAM, expiry and context, longest expiry first."""

    async def test_fields_and_order(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config(keep_alive_s=60.0)) as running:
            body = {"model": "mistral:7b", **CHAT, "stream": False, "keep_alive": "2h"}
            await post(http, running.url + "/api/chat", body)
            async with http.get(running.url + "/api/ps") as resp:
                models = (await resp.json())["models"]
        assert [m["name"] for m in models] == ["mistral:7b", "llama3.1:8b"]
        entry = models[0]
        assert list(entry) == [
            "name", "model", "size", "digest", "details", "expires_at", "size_vram",
            "context_length",
        ]  # fmt: skip
        assert entry["size_vram"] == entry["size"] == 8 * 1024**3
        assert entry["context_length"] == 8192
        assert len(entry["digest"]) == 64
        expires = datetime.fromisoformat(models[0]["expires_at"])
        other = datetime.fromisoformat(models[1]["expires_at"])
        assert (expires - other).total_seconds() == pytest.approx(7200 - 60, abs=5)


class TestInfoEndpoints:
    """Liveness, version, tags, and no /metrics."""

    async def test_root_version_tags(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(ollama.url + "/") as resp:
            assert (resp.status, await resp.text()) == (200, "Ollama is running")
            assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        async with http.head(ollama.url + "/") as resp:
            assert resp.status == 200
        async with http.get(ollama.url + "/api/version") as resp:
            assert await resp.json() == {"version": "0.12.6"}
        async with http.get(ollama.url + "/api/tags") as resp:
            tags = (await resp.json())["models"]
        assert [t["name"] for t in tags] == ["llama3.1:8b", "mistral:7b"]
        assert set(tags[0]) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert tags[0]["details"]["parameter_size"] == "8.0B"

    async def test_no_metrics_endpoint(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(ollama.url + "/metrics") as resp:
            assert (resp.status, await resp.text()) == (404, "404 page not found")


class TestNativeErrors:
    """Native errors are {"error": "..."} with Ollama's statuses and messages."""

    @pytest.mark.parametrize(
        ("body", "status", "message"),
        [
            ({"model": "nope", **CHAT}, 404, "model 'nope' not found"),
            (CHAT, 400, "model is required"),
            (b"", 400, "missing request body"),
            (b"oops", 400, "invalid character 'o' looking for beginning of value"),
        ],
    )
    async def test_chat_errors(
        self,
        ollama: RunningEmulator,
        http: aiohttp.ClientSession,
        body: Any,
        status: int,
        message: str,
    ) -> None:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.post(ollama.url + "/api/chat", **kwargs) as resp:
            assert resp.status == status
            assert await resp.read() == orjson.dumps({"error": message})

    async def test_full_queue_is_503_busy(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config(slots=1, max_queue=0, tok_s=50.0)) as running:
            url = running.url + "/api/chat"
            first = asyncio.create_task(post(http, url, {"model": MODEL, **CHAT}))
            await asyncio.sleep(0.05)
            status, raw, _ = await post(http, url, {"model": MODEL, **CHAT})
            oai_status, oai_raw, _ = await post(
                http, running.url + "/v1/chat/completions", {"model": MODEL, **CHAT}
            )
            await first
        assert status == 503
        assert raw == (
            b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
        )
        assert oai_status == 503
        assert orjson.loads(oai_raw)["error"]["type"] == "api_error"


class TestOpenAIFace:
    """/v1 on Ollama has its own quirks: small ids, fp_ollama, a dedicated finish chunk."""

    async def test_chat_stream_framing(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {
            "model": MODEL, **CHAT, "stream": True, "max_tokens": 2,
            "max_completion_tokens": 1, "stream_options": {"include_usage": True},
        }  # fmt: skip
        status, raw, ctype = await post(http, ollama.url + "/v1/chat/completions", body)
        assert (status, ctype) == (200, "text/event-stream")
        chunks = sse_json(raw)
        assert len(chunks) == 4  # 2 tokens (max_completion_tokens ignored), finish, usage
        ident = chunks[0]["id"]
        assert ident.startswith("chatcmpl-")
        assert 0 <= int(ident.split("-")[1]) <= 998
        assert all(c["id"] == ident and c["system_fingerprint"] == "fp_ollama" for c in chunks)
        assert {c["created"] for c in chunks} == {chunks[0]["created"]}
        assert chunks[0]["choices"] == [
            {"index": 0, "delta": {"role": "assistant", "content": " the"}, "finish_reason": None}
        ]
        assert chunks[2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
        assert chunks[3]["choices"] == []
        assert list(chunks[3]["usage"]) == ["prompt_tokens", "completion_tokens", "total_tokens"]

    async def test_completion_and_embeddings(
        self, ollama: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        _, raw, _ = await post(http, ollama.url + "/v1/completions", body)
        completion = orjson.loads(raw)
        assert raw.endswith(b"}\n")
        assert completion["id"].startswith("cmpl-")
        assert completion["choices"] == [
            {"text": " the quick", "index": 0, "finish_reason": "length"}
        ]
        body = {"model": MODEL, "input": ["a", "b"]}
        _, raw, _ = await post(http, ollama.url + "/v1/embeddings", body)
        embeddings = orjson.loads(raw)
        assert [d["index"] for d in embeddings["data"]] == [0, 1]
        assert len(embeddings["data"][0]["embedding"]) == 768
        _, raw, _ = await post(http, ollama.url + "/api/embed", {"model": MODEL, "input": "a"})
        assert orjson.loads(raw)["embeddings"][0] == embeddings["data"][0]["embedding"]

    @pytest.mark.parametrize(
        ("body", "status", "kind", "message"),
        [
            ({"model": "nope", **CHAT}, 404, "not_found_error", "model 'nope' not found"),
            ({"model": MODEL, "messages": []}, 400, "invalid_request_error",
             "[] is too short - 'messages'"),
        ],
    )  # fmt: skip
    async def test_wrapped_errors(
        self,
        ollama: RunningEmulator,
        http: aiohttp.ClientSession,
        body: Any,
        status: int,
        kind: str,
        message: str,
    ) -> None:
        got, raw, _ = await post(http, ollama.url + "/v1/chat/completions", body)
        assert got == status
        expected = {"message": message, "type": kind, "param": None, "code": None}
        assert orjson.loads(raw) == {"error": expected}

    async def test_models(self, ollama: RunningEmulator, http: aiohttp.ClientSession) -> None:
        async with http.get(ollama.url + "/v1/models") as resp:
            listing = await resp.json()
        assert [m["id"] for m in listing["data"]] == ["llama3.1:8b", "mistral:7b"]
        assert set(listing["data"][0]) == {"id", "object", "created", "owned_by"}
        async with http.get(ollama.url + "/v1/models/mistral:7b") as resp:
            assert (await resp.json())["owned_by"] == "library"
        async with http.get(ollama.url + "/v1/models/nope") as resp:
            assert resp.status == 404
