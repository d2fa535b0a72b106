"""The LM Studio face: no health path, v0/v1 model lists, JIT loading with TTL and auto-evict,
the load API, OpenAI streams and LM Studio's error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig, RunningEmulator, serve

from .conftest import CHAT, eventually, fast_config, post_raw, sdk_chat_stream, sse_json

NO_MODELS = (
    "No models loaded. Please load a model in the developer page or use the 'lms load' command."
)


def cold(capacity_file: Path, **overrides: Any) -> EmulatorConfig:
    """Three 8 GiB models, none loaded, loads of 0.1 s."""
    base: dict[str, Any] = {
        "models": ("small-a", "small-b", "small-c"),
        "capacity_file": capacity_file,
        "preload": (),
        "load_time_scale": 0.05,
    }
    return fast_config("lmstudio", **(base | overrides))


@pytest.fixture
async def lmstudio(capacity_file: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(cold(capacity_file)) as running:
        yield running


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


def loaded(running: RunningEmulator) -> set[str]:
    return {name for name, st in running.engine.models.items() if st.loaded}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, **CHAT, "max_tokens": 2, **extra}


class TestNoHealthPath:
    """Any unknown path or method answers 200 anyway; /v1/models is the liveness probe."""

    @pytest.mark.parametrize(
        ("method", "path"), [("GET", "/"), ("POST", "/v1/models"), ("GET", "/health")]
    )
    async def test_unexpected_endpoints_answer_200(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession, method: str, path: str
    ) -> None:
        async with http.request(method, lmstudio.url + path) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "error": f"Unexpected endpoint or method. ({method} {path})"
            }

    async def test_openai_model_list_has_every_downloaded_model(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        listing = await get_json(http, lmstudio.url + "/v1/models")
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["small-a", "small-b", "small-c"]
        assert listing["data"][0] == {
            "id": "small-a",
            "object": "model",
            "owned_by": "organization_owner",
        }


class TestModelLists:
    """/api/v0/models says state; /api/v1/models lists loaded instances with their config."""

    async def test_state_and_loaded_instances(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        await post_raw(
            http, lmstudio.url + "/api/v1/models/load", {"model": "small-b", "context_length": 4096}
        )
        v0 = await get_json(http, lmstudio.url + "/api/v0/models")
        one = await get_json(http, lmstudio.url + "/api/v0/models/small-b")
        v1 = await get_json(http, lmstudio.url + "/api/v1/models")
        assert [(m["id"], m["state"]) for m in v0["data"]] == [
            ("small-a", "not-loaded"), ("small-b", "loaded"), ("small-c", "not-loaded"),
        ]  # fmt: skip
        assert one["loaded_context_length"] == 4096
        assert "loaded_context_length" not in v0["data"][0]
        assert {
            "type",
            "publisher",
            "arch",
            "compatibility_type",
            "quantization",
            "max_context_length",
        } <= set(one)
        entries = {m["key"]: m for m in v1["models"]}
        assert entries["small-a"]["loaded_instances"] == []
        (instance,) = entries["small-b"]["loaded_instances"]
        assert instance["id"] == "small-b"
        assert (instance["config"]["context_length"], instance["config"]["parallel"]) == (4096, 4)
        assert entries["small-b"]["quantization"] == {"name": "Q4_K_M", "bits_per_weight": 4}

    async def test_unknown_model_entry_is_404(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(lmstudio.url + "/api/v0/models/nope") as resp:
            assert resp.status == 404


class TestLoadApi:
    """POST /api/v1/models/load takes the load time and pins the model; unload frees it."""

    async def test_load_and_unload(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"model": "small-a", "echo_load_config": True}
        status, raw, _ = await post_raw(http, lmstudio.url + "/api/v1/models/load", body)
        answer = orjson.loads(raw)
        assert status == 200
        assert (answer["type"], answer["instance_id"], answer["status"]) == (
            "llm",
            "small-a",
            "loaded",
        )
        assert answer["load_time_seconds"] == pytest.approx(0.1, abs=0.05)
        assert answer["load_config"]["parallel"] == 4
        assert lmstudio.engine.models["small-a"].pinned
        status, raw, _ = await post_raw(
            http, lmstudio.url + "/api/v1/models/unload", {"instance_id": "small-a"}
        )
        assert (status, orjson.loads(raw)) == (200, {"instance_id": "small-a"})
        assert loaded(lmstudio) == set()

    @pytest.mark.parametrize(
        ("path", "body", "status", "kind"),
        [
            ("/api/v1/models/load", {"model": "nope"}, 404, "model_not_found"),
            ("/api/v1/models/load", {}, 400, "invalid_request"),
            ("/api/v1/models/unload", {"instance_id": "small-a"}, 404, "model_not_found"),
        ],
    )
    async def test_v1_errors(
        self,
        lmstudio: RunningEmulator,
        http: aiohttp.ClientSession,
        path: str,
        body: Any,
        status: int,
        kind: str,
    ) -> None:
        got, raw, _ = await post_raw(http, lmstudio.url + path, body)
        assert got == status
        assert orjson.loads(raw)["error"]["type"] == kind


class TestJitLoading:
    """Requests load models on demand; a JIT model unloads after its TTL, or when another JIT
    model loads (auto-evict); a model loaded through the API is left alone."""

    async def test_cold_request_loads_then_ttl_unloads(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, _, _ = await post_raw(
            http, lmstudio.url + "/v1/chat/completions", chat("small-a", ttl=0.15)
        )
        assert status == 200
        assert loaded(lmstudio) == {"small-a"}
        assert lmstudio.engine.models["small-a"].jit
        assert lmstudio.engine.models["small-a"].load_s == pytest.approx(0.1, abs=0.05)
        await eventually(lambda: loaded(lmstudio) == set(), within_s=2.0)

    async def test_auto_evict_keeps_one_jit_model_and_spares_pinned(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        url = lmstudio.url
        await post_raw(http, url + "/api/v1/models/load", {"model": "small-c"})
        await post_raw(http, url + "/v1/chat/completions", chat("small-a"))
        assert loaded(lmstudio) == {"small-a", "small-c"}
        await post_raw(
            http, url + "/v1/completions", {"model": "small-b", "prompt": "x", "max_tokens": 1}
        )
        assert loaded(lmstudio) == {"small-b", "small-c"}
        assert lmstudio.engine.models["small-b"].keep_alive_s == 3600.0  # default JIT TTL
        assert lmstudio.engine.models["small-c"].keep_alive_s < 0  # pinned: no TTL

    async def test_jit_load_that_cannot_fit_is_an_error(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        async with serve(
            cold(capacity_file, gpu_memory_gb=(12.0,), preload=("small-a",))
        ) as running:
            status, raw, _ = await post_raw(
                http, running.url + "/v1/chat/completions", chat("small-b")
            )
        assert status == 500
        error = orjson.loads(raw)["error"]
        assert error["message"].startswith('Failed to load model "small-b". Error: out of memory')

    async def test_without_jit_only_loaded_models_serve(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        async with serve(cold(capacity_file, jit=False)) as running:
            url = running.url
            empty = await post_raw(http, url + "/v1/chat/completions", chat("small-a"))
            listed_empty = await get_json(http, url + "/v1/models")
            await post_raw(http, url + "/api/v1/models/load", {"model": "small-a"})
            listed = await get_json(http, url + "/v1/models")
            other = await post_raw(http, url + "/v1/chat/completions", chat("small-b"))
            implicit = await post_raw(http, url + "/v1/chat/completions", {**CHAT, "max_tokens": 1})
        assert (empty[0], orjson.loads(empty[1])) == (400, {"error": NO_MODELS})
        assert listed_empty["data"] == []
        assert [m["id"] for m in listed["data"]] == ["small-a"]
        assert other[0] == 400
        assert orjson.loads(other[1])["error"]["code"] == "model_not_found"
        assert (implicit[0], orjson.loads(implicit[1])["model"]) == (200, "small-a")


class TestOpenAIRoutes:
    """Chat, completions and embeddings answer in LM Studio's OpenAI shapes."""

    async def test_chat_stream_raw_framing(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = chat("small-a", stream=True, stream_options={"include_usage": True})
        status, raw, headers = await post_raw(http, lmstudio.url + "/v1/chat/completions", body)
        assert (status, headers["Content-Type"]) == (200, "text/event-stream")
        assert raw.endswith(b"\n\ndata: [DONE]\n\n")
        chunks = sse_json(raw)
        assert len(chunks) == 4  # two tokens, the finish chunk, usage
        assert {c["id"] for c in chunks} == {chunks[0]["id"]}
        assert chunks[0]["id"].startswith("chatcmpl-")
        assert all(c["system_fingerprint"] == "small-a" for c in chunks)
        assert chunks[0]["choices"] == [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": " the"},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
        assert chunks[2]["choices"] == [
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
        ]
        assert (chunks[3]["choices"], chunks[3]["usage"]["completion_tokens"]) == ([], 2)

    async def test_bodies_and_unlimited_max_tokens(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        _, raw, _ = await post_raw(
            http, lmstudio.url + "/v1/chat/completions", chat("small-a", max_tokens=-1)
        )
        answer = orjson.loads(raw)
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["usage"]["completion_tokens"] == 16
        assert answer["stats"] == {}
        _, raw, _ = await post_raw(
            http, lmstudio.url + "/v1/embeddings", {"model": "small-a", "input": ["a", "b"]}
        )
        vectors = orjson.loads(raw)
        assert [d["index"] for d in vectors["data"]] == [0, 1]
        assert len(vectors["data"][0]["embedding"]) == 768

    async def test_invalid_model_identifier(
        self, lmstudio: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        status, raw, _ = await post_raw(http, lmstudio.url + "/v1/chat/completions", chat("nope"))
        assert status == 400
        assert orjson.loads(raw) == {
            "error": {
                "message": 'Invalid model identifier "nope". Please specify a valid downloaded '
                'model (e.g., "small-a", "small-b", "small-c").',
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }

    async def test_openai_sdk_streams_with_jit_load(self, lmstudio: RunningEmulator) -> None:
        text, completion_tokens = await sdk_chat_stream(lmstudio.url + "/v1", "small-b", 3)
        assert (text, completion_tokens) == (" the quick brown", 3)
        assert loaded(lmstudio) == {"small-b"}
