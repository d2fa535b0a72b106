"""Emulator test helpers: configs that answer fast, a client session, raw stream parsing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig

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


def vllm_config(**overrides: Any) -> EmulatorConfig:
    base: dict[str, Any] = {
        "kind": "vllm",
        "models": (VLLM_MODEL,),
        "tok_s": 1000.0,
        "ttft_s": 0.01,
    }
    return EmulatorConfig(**(base | overrides))


def ollama_config(**overrides: Any) -> EmulatorConfig:
    base: dict[str, Any] = {
        "kind": "ollama",
        "models": ("llama3.1:8b", "mistral:7b"),
        "tok_s": 1000.0,
        "ttft_s": 0.01,
        "load_time_scale": 0.01,
    }
    return EmulatorConfig(**(base | overrides))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def sse_events(raw: bytes) -> list[bytes]:
    """Split an SSE body into event payloads, checking every event is ``data: ...\\n\\n``."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
    return [event[len(b"data: ") :] for event in events]


def sse_json(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of an SSE body that ends with ``data: [DONE]``."""
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


async def eventually(check: Callable[[], Any], within_s: float = 3.0) -> None:
    """Wait until ``check()`` is truthy; the server side of a disconnect lands a moment later."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


CHAT = {"messages": [{"role": "user", "content": "Say something, please."}]}
