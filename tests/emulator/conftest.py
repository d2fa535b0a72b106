"""Emulator test helpers: configs that answer fast, a client session, raw stream parsing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from bench.emulator import EmulatorConfig
from bench.llamacpp.model import ensure as ensure_model

from .llamacpp_servers import CAPACITY, Llama, emulated_server, real_server

VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# A capacity table for tests: "steep" slows every stream a lot per extra stream in the batch.
TEST_CAPACITY = """
[classes.small]
vram_gb = 8
gpus = 1
min_tok_s = 400
max_tok_s = 600
batch_decay = 0.06
load_s = 2.0
slots = 4

[classes.steep]
vram_gb = 8
gpus = 1
min_tok_s = 200
max_tok_s = 200
batch_decay = 1.0
load_s = 1.0
slots = 4

[classes.pair]
vram_gb = 40
gpus = 2
min_tok_s = 100
max_tok_s = 100
batch_decay = 0.03
load_s = 1.0
slots = 8

[models]
"small-a" = "small"
"small-b" = "small"
"small-c" = "small"
"steep" = "steep"
"pair" = "pair"
"""


@pytest.fixture
def capacity_file(tmp_path: Path) -> Path:
    path = tmp_path / "capacity.toml"
    path.write_text(TEST_CAPACITY)
    return path


TWO_MODELS = ("llama3.1:8b", "mistral:7b")
DEFAULT_MODELS = {
    "vllm": (VLLM_MODEL,),
    "tgi": (VLLM_MODEL,),
    "ollama": TWO_MODELS,
    "triton": TWO_MODELS,
    "lmstudio": TWO_MODELS,
    "llamacpp": (VLLM_MODEL,),
}


def fast_config(kind: str, **overrides: Any) -> EmulatorConfig:
    """A config of ``kind`` that answers in milliseconds (loads take 1% of the table's time)."""
    base: dict[str, Any] = {
        "kind": kind,
        "models": DEFAULT_MODELS[kind],
        "tok_s": 1000.0,
        "ttft_s": 0.01,
        "load_time_scale": 0.01,
    }
    return EmulatorConfig(**(base | overrides))


def vllm_config(**overrides: Any) -> EmulatorConfig:
    return fast_config("vllm", **overrides)


def ollama_config(**overrides: Any) -> EmulatorConfig:
    return fast_config("ollama", **overrides)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a connection per request: llama-server ends the connection after
    every stream without a header saying so, which a pooling client only learns on reuse."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random-weight GGUF the real llama-server serves (written once, then cached)."""
    return ensure_model()


@pytest.fixture(params=["real", "emulated"])
async def llama(
    request: pytest.FixtureRequest, tiny_model: Path, tmp_path: Path
) -> AsyncIterator[Llama]:
    """A fresh llama-server: the real one, then the emulated face."""
    if request.param == "real":
        async with real_server(tiny_model, tmp_path / "llama-server.log") as server:
            yield server
    else:
        capacity = tmp_path / "capacity.toml"
        capacity.write_text(CAPACITY)
        async with emulated_server(capacity) as server:
            yield server


def sse_events(raw: bytes, prefix: bytes = b"data: ") -> list[bytes]:
    """Split an SSE body into event payloads, checking every event is ``<prefix>...\\n\\n``
    (``prefix=b"data:"`` checks TGI's form: the next byte must not be a space)."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(prefix), event
        assert not event[len(prefix) :].startswith(b" "), event
    return [event[len(prefix) :] for event in events]


def sse_json(raw: bytes, prefix: bytes = b"data: ") -> list[dict[str, Any]]:
    """The JSON events of an SSE body that ends with ``[DONE]``."""
    events = sse_events(raw, prefix)
    assert events[-1] == b"[DONE]"
    assert b"[DONE]" not in b"".join(events[:-1])
    return [orjson.loads(e) for e in events[:-1]]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def post_raw(
    http: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, bytes, Mapping[str, str]]:
    """POST ``body`` (JSON, or bytes as they are) and return status, raw body and headers."""
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(url, **kwargs) as resp:
        return resp.status, await resp.read(), resp.headers


async def set_fault(http: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    async with http.post(url + "/_emulator/faults", json=body) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def eventually(check: Callable[[], Any], within_s: float = 3.0) -> None:
    """Wait until ``check()`` is truthy; the server side of a disconnect lands a moment later."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def sdk_chat_stream(base_url: str, model: str, max_tokens: int) -> tuple[str, int | None]:
    """Stream a chat through the official openai SDK; the text and the completion tokens of
    the usage chunk (None when none came)."""
    async with AsyncOpenAI(base_url=base_url, api_key="-", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        completion_tokens = None
        async for chunk in stream:
            pieces.extend(c.delta.content or "" for c in chunk.choices)
            if chunk.usage is not None:
                completion_tokens = chunk.usage.completion_tokens
    return "".join(pieces), completion_tokens


CHAT = {"messages": [{"role": "user", "content": "Say something, please."}]}
