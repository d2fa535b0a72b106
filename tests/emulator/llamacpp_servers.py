"""Real and emulated llama-servers for the llamacpp face tests, and readers of their answers.

Both kinds run with two slots of 4096 tokens (``--parallel 2 -c 8192``) and embeddings on. The
real one is ``llama-server`` as ``bench/llamacpp/build.sh`` builds it, serving a tiny
random-weight GGUF; without the binary its tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig, serve
from bench.llamacpp.paths import NotBuiltError, server_binary
from bench.llamacpp.servers import llama_server, wait_ready

IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
SLOT_CTX = 4096
CAPACITY = """
[classes.tiny]
vram_gb = 1
gpus = 1
min_tok_s = 400
max_tok_s = 400
batch_decay = 0.0
load_s = 1.0
slots = 2

[models]
"tiny" = "tiny"
"""
CHAT_CHUNK_KEYS = ["choices", "created", "id", "model", "system_fingerprint", "object"]
ANSWER_KEYS = ["choices", "created", "model", "system_fingerprint", "object", "usage", "id"]
TIMING_KEYS = [
    "cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
    "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second",
]  # fmt: skip
USAGE_KEYS = ["completion_tokens", "prompt_tokens", "total_tokens", "prompt_tokens_details"]
METRIC_NAMES = [
    "prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
    "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total",
    "n_tokens_max", "spec_decode_num_draft_tokens_total",
    "spec_decode_num_accepted_tokens_total", "spec_decode_num_drafts_total",
    "prompt_tokens_seconds", "predicted_tokens_seconds", "requests_processing",
    "requests_deferred", "n_busy_slots_per_decode",
]  # fmt: skip
LONG_TEXT = "the quick brown fox jumps over a lazy dog " * 30


@dataclass(frozen=True, slots=True)
class Llama:
    """A running server: ``real`` llama-server or the ``emulated`` face."""

    kind: str
    url: str


@contextlib.asynccontextmanager
async def real_server(model: Path, log: Path) -> AsyncIterator[Llama]:
    try:
        server_binary()
    except NotBuiltError as exc:
        if IN_CI:
            pytest.fail(f"{exc}; CI is set, so this must not be skipped", pytrace=False)
        pytest.skip(str(exc))
    engine = llama_server(model, parallel=2, context=2 * SLOT_CTX, embeddings=True, log_path=log)
    await engine.start()
    try:
        yield Llama("real", engine.url)
    finally:
        await engine.stop()


@contextlib.asynccontextmanager
async def emulated_server(capacity: Path) -> AsyncIterator[Llama]:
    config = EmulatorConfig(
        kind="llamacpp",
        models=("tiny",),
        slots=2,
        context_length=2 * SLOT_CTX,
        ttft_s=0.005,
        load_time_scale=0.01,
        capacity_file=capacity,
    )
    async with serve(config) as running:
        await asyncio.wait_for(wait_ready(running.url), 5)
        yield Llama("emulated", running.url)


async def get_json(client: aiohttp.ClientSession, url: str) -> tuple[int, Any, Any]:
    async with client.get(url) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


def events(raw: bytes, done: bool = True) -> list[dict[str, Any]]:
    """The events of a llama-server stream, each checked to be ``data: `` and compact JSON
    exactly as orjson writes it (no spaces, keys as sent)."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    frames = raw[:-2].split(b"\n\n")
    assert all(f.startswith(b"data: ") for f in frames), frames
    payloads = [f[len(b"data: ") :] for f in frames]
    if done:
        assert payloads.pop() == b"[DONE]"
    assert b"[DONE]" not in b"".join(payloads)
    parsed = [orjson.loads(p) for p in payloads]
    assert [orjson.dumps(p) for p in parsed] == payloads
    return parsed


def metrics(text: str) -> dict[str, float]:
    """The ``llamacpp:`` samples, each announced by its own HELP and TYPE lines."""
    lines = text.splitlines()
    out: dict[str, float] = {}
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            name, value = line.split(" ")
            short = name.removeprefix("llamacpp:")
            assert lines[i - 2].startswith(f"# HELP {name} ")
            assert lines[i - 1] in (f"# TYPE {name} counter", f"# TYPE {name} gauge")
            out[short] = float(value)
    return out


async def scrape(client: aiohttp.ClientSession, llama: Llama) -> dict[str, float]:
    async with client.get(llama.url + "/metrics") as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4"
        return metrics(await resp.text())


def chat(text: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "model": "any-name-at-all",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }
