"""The llamacpp face against the real llama-server: the same tests run on both.

Each test gets a fresh server of each kind: the real ``llama-server`` (built by
``bench/llamacpp/build.sh``, serving a tiny random-weight GGUF) and the emulator's face, both
with two slots of 4096 tokens (``--parallel 2 -c 8192``) and embeddings on. Without the binary
the real half is skipped locally and fails in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig, serve
from bench.llamacpp.fleet import ServerSpec, llama_server, server_binary, wait_ready
from bench.llamacpp.tiny_gguf import write_tiny_model

from .conftest import post_raw

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("llama") / "tiny.gguf")


@contextlib.asynccontextmanager
async def _real(model: Path, log: Path) -> AsyncIterator[Llama]:
    if not server_binary().is_file():
        reason = f"{server_binary()} is missing (bench/llamacpp/build.sh builds it)"
        if IN_CI:
            pytest.fail(f"{reason}; CI is set, so this must not be skipped", pytrace=False)
        pytest.skip(reason)
    spec = ServerSpec(model, extra=("--embeddings", "--pooling", "mean"))
    async with llama_server(spec, log) as server:
        yield Llama("real", server.url)


@contextlib.asynccontextmanager
async def _emulated(capacity: Path) -> AsyncIterator[Llama]:
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


@pytest.fixture(params=["real", "emulated"])
async def llama(
    request: pytest.FixtureRequest, tiny_model: Path, tmp_path: Path
) -> AsyncIterator[Llama]:
    if request.param == "real":
        async with _real(tiny_model, tmp_path / "llama-server.log") as server:
            yield server
    else:
        capacity = tmp_path / "capacity.toml"
        capacity.write_text(CAPACITY)
        async with _emulated(capacity) as server:
            yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a connection per request: llama-server ends the connection after
    every stream without a header saying so, which a pooling client only learns on reuse."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, Any]:
    async with http.get(url) as resp:
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


async def scrape(http: aiohttp.ClientSession, llama: Llama) -> dict[str, float]:
    async with http.get(llama.url + "/metrics") as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4"
        return metrics(await resp.text())


def chat(text: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "model": "any-name-at-all",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


async def test_health_is_ok_and_every_answer_names_llama_cpp(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/health`` is 200 ``{"status":"ok"}``; the Server header says llama.cpp."""
    async with http.get(llama.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b'{"status":"ok"}'
        assert resp.headers["Server"] == "llama.cpp"
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_props_describe_slots_context_and_build(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/props``: slots, per-slot context, alias, template and build, in llama-server's keys."""
    status, props, _ = await get_json(http, llama.url + "/props")
    assert status == 200
    assert list(props) == [
        "default_generation_settings", "total_slots", "model_alias", "model_ftype",
        "model_path", "modalities", "media_marker", "endpoint_slots", "endpoint_props",
        "endpoint_metrics", "ui", "ui_settings", "chat_template", "chat_template_caps",
        "bos_token", "eos_token", "build_info", "is_sleeping", "cors_proxy_enabled",
    ]  # fmt: skip
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == SLOT_CTX
    assert props["default_generation_settings"]["params"]["n_predict"] == -1
    assert props["model_alias"] == "tiny"
    assert re.fullmatch(r"b\d+-[0-9a-f]+", props["build_info"])
    assert props["endpoint_metrics"] is True
    assert props["is_sleeping"] is False


async def test_slots_list_each_idle_slot(llama: Llama, http: aiohttp.ClientSession) -> None:
    """``/slots`` on a fresh server: one entry per slot, idle, with its context."""
    status, slots, _ = await get_json(http, llama.url + "/slots")
    assert status == 200
    assert slots == [
        {"id": 0, "n_ctx": SLOT_CTX, "speculative": False, "is_processing": False},
        {"id": 1, "n_ctx": SLOT_CTX, "speculative": False, "is_processing": False},
    ]


async def test_metrics_carry_the_llamacpp_series(llama: Llama, http: aiohttp.ClientSession) -> None:
    """``/metrics``: the ``llamacpp:`` series in llama-server's order, zero at start."""
    async with http.get(llama.url + "/metrics") as resp:
        assert resp.headers["Process-Start-Time-Unix"].isdigit()
    samples = await scrape(http, llama)
    assert list(samples) == METRIC_NAMES
    assert set(samples.values()) == {0.0}


async def test_models_list_openai_and_ollama_shapes(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/v1/models``: an Ollama-style ``models`` list and the OpenAI ``data`` list."""
    status, body, _ = await get_json(http, llama.url + "/v1/models")
    assert status == 200
    assert list(body) == ["models", "object", "data"]
    (card,) = body["data"]
    assert list(card) == ["id", "aliases", "tags", "object", "created", "owned_by", "meta"]
    assert (card["id"], card["owned_by"], card["aliases"]) == ("tiny", "llamacpp", ["tiny"])
    assert list(card["meta"]) == [
        "vocab_type", "n_vocab", "n_ctx", "n_ctx_train", "n_embd", "n_params", "size", "ftype",
    ]  # fmt: skip
    assert card["meta"]["n_ctx"] == SLOT_CTX
    (ollama_card,) = body["models"]
    assert (ollama_card["name"], ollama_card["model"]) == ("tiny", "tiny")
    assert ollama_card["details"]["format"] == "gguf"


async def test_chat_stream_frames_role_tokens_finish_usage_and_done(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """A streamed chat with usage: role chunk, a chunk per token, an empty finish delta, then
    usage and timings with ``choices: []``, then ``[DONE]``; the model name is not checked."""
    body = chat("Hello there", stream=True, stream_options={"include_usage": True})
    status, raw, headers = await post_raw(http, llama.url + "/v1/chat/completions", body)
    assert status == 200
    assert (headers["Content-Type"], headers["X-Accel-Buffering"]) == ("text/event-stream", "no")
    role, *tokens, finish, usage = events(raw)
    assert all(list(e) == CHAT_CHUNK_KEYS for e in (role, *tokens, finish))
    assert role["choices"] == [
        {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}
    ]
    assert len(tokens) == 3
    assert all(list(t["choices"][0]["delta"]) == ["content"] for t in tokens)
    assert finish["choices"] == [{"finish_reason": "length", "index": 0, "delta": {}}]
    assert list(usage) == [*CHAT_CHUNK_KEYS, "usage", "timings"]
    assert usage["choices"] == []
    assert list(usage["usage"]) == USAGE_KEYS
    assert usage["usage"]["completion_tokens"] == 3
    assert list(usage["timings"]) == TIMING_KEYS
    assert {e["id"] for e in (role, *tokens, finish, usage)} == {role["id"]}
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{32}", role["id"])
    assert role["model"] == "tiny"
    assert role["object"] == "chat.completion.chunk"


async def test_chat_stream_without_usage_puts_timings_on_the_finish_chunk(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """Without ``include_usage`` the finish chunk carries ``timings`` and no usage follows."""
    body = chat("Hello there", max_tokens=2, stream=True)
    _, raw, _ = await post_raw(http, llama.url + "/v1/chat/completions", body)
    _role, *tokens, finish = events(raw)
    assert len(tokens) == 2
    assert list(finish) == [*CHAT_CHUNK_KEYS, "timings"]
    assert finish["timings"]["predicted_n"] == 2


async def test_chat_whole_answer_has_usage_id_then_timings(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """A whole chat answer: llama-server's key order, usage with cached tokens, timings."""
    status, raw, headers = await post_raw(http, llama.url + "/v1/chat/completions", chat("Hi"))
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    answer = orjson.loads(raw)
    assert orjson.dumps(answer) == raw
    assert list(answer) == [*ANSWER_KEYS, "timings"]
    assert answer["object"] == "chat.completion"
    (choice,) = answer["choices"]
    assert list(choice) == ["finish_reason", "index", "message"]
    assert list(choice["message"]) == ["role", "content"]
    assert choice["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": answer["timings"]["cache_n"]}
    assert answer["timings"]["prompt_n"] + answer["timings"]["cache_n"] == usage["prompt_tokens"]


async def test_completions_stream_and_whole_answer(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/v1/completions``: token events end with ``id``; the finish event always carries
    usage and timings; the whole answer is that event with the full text."""
    body = {"prompt": "Hello", "max_tokens": 2, "stream": True}
    _, raw, _ = await post_raw(http, llama.url + "/v1/completions", body)
    *tokens, finish = events(raw)
    assert len(tokens) == 2
    token_keys = ["choices", "created", "model", "system_fingerprint", "object", "id"]
    assert all(list(t) == token_keys for t in tokens)
    assert list(tokens[0]["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
    assert list(finish) == [*ANSWER_KEYS, "timings"]
    assert finish["choices"][0] | {"text": ""} == finish["choices"][0]
    assert finish["choices"][0]["finish_reason"] == "length"
    status, raw, _ = await post_raw(http, llama.url + "/v1/completions", body | {"stream": False})
    answer = orjson.loads(raw)
    assert status == 200
    assert list(answer) == [*ANSWER_KEYS, "timings"]
    assert answer["object"] == "text_completion"
    assert answer["usage"]["completion_tokens"] == 2


async def test_native_completion_streams_without_done(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/completion``: per-token events with ``tokens``, a final event with the settings and
    timings, and no ``[DONE]``; the whole answer is that final event."""
    body = {"prompt": "Hello", "n_predict": 2, "stream": True}
    _, raw, _ = await post_raw(http, llama.url + "/completion", body)
    *tokens, final = events(raw, done=False)
    assert [list(t) for t in tokens] == [
        ["index", "content", "tokens", "stop", "id_slot", "tokens_predicted", "tokens_evaluated"]
    ] * 2
    assert [t["tokens_predicted"] for t in tokens] == [1, 2]
    assert list(final) == [
        "index", "content", "tokens", "id_slot", "stop", "model", "tokens_predicted",
        "tokens_evaluated", "generation_settings", "prompt", "has_new_line", "truncated",
        "stop_type", "stopping_word", "tokens_cached", "timings",
    ]  # fmt: skip
    assert (final["stop"], final["stop_type"], final["content"]) == (True, "limit", "")
    assert final["id_slot"] in (0, 1)
    assert final["tokens_cached"] == final["tokens_evaluated"] + 1
    _, raw, _ = await post_raw(http, llama.url + "/completion", body | {"stream": False})
    whole = orjson.loads(raw)
    assert list(whole) == list(final)
    assert whole["generation_settings"]["n_predict"] == 2


async def test_embeddings_answer_one_vector_per_input(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """``/v1/embeddings``: unit vectors per input, usage, the requested model echoed."""
    body = {"input": ["Hello", "world wide"], "model": "whatever"}
    status, raw, _ = await post_raw(http, llama.url + "/v1/embeddings", body)
    assert status == 200
    answer = orjson.loads(raw)
    assert list(answer) == ["model", "object", "usage", "data"]
    assert (answer["model"], answer["object"]) == ("whatever", "list")
    assert [list(d) for d in answer["data"]] == [["embedding", "index", "object"]] * 2
    assert [d["index"] for d in answer["data"]] == [0, 1]
    norm = sum(v * v for v in answer["data"][0]["embedding"])
    assert norm == pytest.approx(1.0, abs=1e-3)
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


async def test_tokenize_gives_ids_and_pieces(llama: Llama, http: aiohttp.ClientSession) -> None:
    """``/tokenize``: token ids, or ``{id, piece}`` pairs whose pieces spell the text."""
    _, raw, _ = await post_raw(http, llama.url + "/tokenize", {"content": "Hello there"})
    tokens = orjson.loads(raw)["tokens"]
    assert tokens
    assert all(isinstance(t, int) for t in tokens)
    body = {"content": "Hello there", "with_pieces": True}
    _, raw, _ = await post_raw(http, llama.url + "/tokenize", body)
    pieces = orjson.loads(raw)["tokens"]
    assert [p["id"] for p in pieces] == tokens
    assert "".join(p["piece"] for p in pieces).strip() == "Hello there"


async def test_a_prompt_longer_than_a_slot_is_refused(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """A prompt over a slot's context: 400 ``exceed_context_size_error`` with the counts, and
    the connection is closed."""
    body = chat("the " * 5000, stream=True)
    status, raw, headers = await post_raw(http, llama.url + "/v1/chat/completions", body)
    assert status == 400
    assert headers["Connection"] == "close"
    error = orjson.loads(raw)["error"]
    assert list(error) == ["code", "message", "type", "n_prompt_tokens", "n_ctx"]
    assert (error["code"], error["type"], error["n_ctx"]) == (
        400, "exceed_context_size_error", SLOT_CTX,
    )  # fmt: skip
    assert error["n_prompt_tokens"] > SLOT_CTX
    assert error["message"] == (
        f"request ({error['n_prompt_tokens']} tokens) exceeds the available context size "
        f"({SLOT_CTX} tokens), try increasing it"
    )


async def test_errors_use_the_llama_cpp_envelope(llama: Llama, http: aiohttp.ClientSession) -> None:
    """Unknown routes and wrong methods are 404 ``File Not Found``; a missing or empty field
    is 400; a body that is not JSON is a 500."""
    for method, path in (("GET", "/nope"), ("GET", "/v1/chat/completions")):
        async with http.request(method, llama.url + path) as resp:
            assert resp.status == 404
            assert await resp.read() == (
                b'{"error":{"message":"File Not Found","type":"not_found_error","code":404}}'
            )
    status, raw, _ = await post_raw(http, llama.url + "/v1/chat/completions", {"model": "x"})
    assert status == 400
    assert orjson.loads(raw) == {
        "error": {"code": 400, "message": "'messages' is required", "type": "invalid_request_error"}
    }
    body = {"prompt": [], "max_tokens": 1}
    status, raw, _ = await post_raw(http, llama.url + "/v1/completions", body)
    assert status == 400
    assert orjson.loads(raw)["error"]["message"] == '"prompt" must not be empty'
    status, raw, _ = await post_raw(http, llama.url + "/v1/completions", b"{bad")
    assert status == 500
    assert orjson.loads(raw)["error"]["type"] == "server_error"


async def _raw_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]
) -> bytes:
    """Send a completions request on an open connection; the head of its answer."""
    payload = orjson.dumps(body)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def test_a_stream_ends_its_connection_silently_and_a_whole_answer_keeps_it(
    llama: Llama,
) -> None:
    """On one connection: a whole answer leaves it open for the next request; a streamed
    answer is followed by the server closing it, with no ``Connection: close`` header."""
    host, port = llama.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = await _raw_answer(reader, writer, {"prompt": "Hello", "max_tokens": 2})
        assert head.startswith(b"HTTP/1.1 200")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        assert length is not None
        await reader.readexactly(int(length.group(1)))
        body = {"prompt": "Hello", "max_tokens": 2, "stream": True}
        head = await _raw_answer(reader, writer, body)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection:" not in head.lower()
        rest = await asyncio.wait_for(reader.read(), 10)  # returns only at EOF
        assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the last chunk, then EOF
    finally:
        writer.close()


async def _hold_stream(url: str, body: dict[str, Any], started: list[int]) -> None:
    """Open a stream, note when its first bytes come, then keep it open until cancelled."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body) as resp,
    ):
        await resp.content.readany()
        started.append(resp.status)
        await asyncio.sleep(120)


async def test_requests_beyond_the_slots_wait_and_a_gone_client_frees_its_slot(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """Four long streams on two slots: two process, two are deferred (metrics and /slots say
    so); once the clients go away every slot is idle again."""
    body = {"prompt": "Count with me", "max_tokens": 3000, "stream": True}
    started: list[int] = []
    holders = [
        asyncio.create_task(_hold_stream(llama.url + "/v1/completions", body, started))
        for _ in range(4)
    ]
    try:
        seen: dict[str, float] = {}

        async def both_states() -> bool:
            seen.update(await scrape(http, llama))
            return seen["requests_processing"] == 2 and seen["requests_deferred"] == 2

        deadline = asyncio.get_running_loop().time() + 15
        while not await both_states():
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.05)
        _, slots, _ = await get_json(http, llama.url + "/slots")
        assert [s["is_processing"] for s in slots] == [True, True]
        assert all(s["next_token"][0]["n_remain"] > 0 for s in slots)
        assert len(started) <= 2
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    idle: list[bool] = []

    async def all_idle() -> bool:
        _, slots, _ = await get_json(http, llama.url + "/slots")
        idle[:] = [not s["is_processing"] for s in slots]
        return all(idle)

    deadline = asyncio.get_running_loop().time() + 15
    while not await all_idle():
        assert asyncio.get_running_loop().time() < deadline, idle
        await asyncio.sleep(0.05)
    samples = await scrape(http, llama)
    assert (samples["requests_processing"], samples["requests_deferred"]) == (0, 0)


async def test_a_repeated_prompt_is_read_from_the_slot_cache(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """The same long prompt twice: the second reuses all of it but its last token, and the
    metrics count the reused tokens; ``cache_prompt: false`` reuses nothing."""
    url = llama.url + "/v1/chat/completions"
    _, raw, _ = await post_raw(http, url, chat(LONG_TEXT, max_tokens=2))
    first = orjson.loads(raw)
    _, raw, _ = await post_raw(http, url, chat(LONG_TEXT, max_tokens=2))
    second = orjson.loads(raw)
    prompt = second["usage"]["prompt_tokens"]
    assert prompt > 100
    assert first["timings"]["cache_n"] == 0
    assert second["timings"]["cache_n"] == prompt - 1
    assert second["timings"]["prompt_n"] == 1
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt - 1
    samples = await scrape(http, llama)
    assert samples["prompt_tokens_cached_total"] == prompt - 1
    assert samples["prompt_tokens_total"] == prompt + 1
    assert samples["tokens_predicted_total"] == 4
    _, raw, _ = await post_raw(http, url, chat(LONG_TEXT, max_tokens=2, cache_prompt=False))
    assert orjson.loads(raw)["timings"]["cache_n"] == 0


async def test_a_follow_up_turn_finds_its_conversation_cached(
    llama: Llama, http: aiohttp.ClientSession
) -> None:
    """Two conversations interleaved over two slots: each next turn, which repeats its
    conversation so far, reuses at least that conversation's first prompt."""
    url = llama.url + "/v1/chat/completions"
    turns: dict[str, list[dict[str, Any]]] = {}
    firsts: dict[str, int] = {}
    for name in ("alpha", "bravo"):
        turns[name] = [{"role": "user", "content": f"{name} says " + LONG_TEXT}]
        _, raw, _ = await post_raw(http, url, {"messages": turns[name], "max_tokens": 4})
        answer = orjson.loads(raw)
        firsts[name] = answer["usage"]["prompt_tokens"]
        reply = answer["choices"][0]["message"]["content"]
        turns[name] += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "and then?"},
        ]
    for name in ("alpha", "bravo"):
        _, raw, _ = await post_raw(http, url, {"messages": turns[name], "max_tokens": 2})
        assert orjson.loads(raw)["timings"]["cache_n"] >= firsts[name] - 1


async def test_a_loading_emulated_server_answers_503_everywhere(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """While the model loads, every route is 503 ``Loading model`` (body as llama-server
    writes it); the tiny real model loads too fast to catch, so this runs on the face only."""
    capacity = tmp_path / "capacity.toml"
    capacity.write_text(CAPACITY)
    config = EmulatorConfig(
        kind="llamacpp", models=("tiny",), slots=2, load_time_scale=0.5, capacity_file=capacity
    )
    async with serve(config) as running:
        for path in ("/health", "/v1/models", "/props"):
            async with http.get(running.url + path) as resp:
                assert resp.status == 503
                assert resp.headers["Server"] == "llama.cpp"
                assert await resp.read() == (
                    b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}'
                )
        await asyncio.wait_for(wait_ready(running.url), 5)
