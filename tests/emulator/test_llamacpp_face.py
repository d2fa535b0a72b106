"""The llamacpp face against the real llama-server, route by route: the same tests run on both
(``llama`` is each kind in turn, fresh for every test)."""

from __future__ import annotations

import re

import aiohttp
import orjson
import pytest

from .conftest import post_raw
from .llamacpp_servers import (
    ANSWER_KEYS,
    CHAT_CHUNK_KEYS,
    METRIC_NAMES,
    SLOT_CTX,
    TIMING_KEYS,
    USAGE_KEYS,
    Llama,
    chat,
    events,
    get_json,
    scrape,
)


async def test_health_is_ok_and_every_answer_names_llama_cpp(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/health`` is 200 ``{"status":"ok"}``; the Server header says llama.cpp."""
    async with client.get(llama.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b'{"status":"ok"}'
        assert resp.headers["Server"] == "llama.cpp"
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_props_describe_slots_context_and_build(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/props``: slots, per-slot context, alias, template and build, in llama-server's keys."""
    status, props, _ = await get_json(client, llama.url + "/props")
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


async def test_slots_list_each_idle_slot(llama: Llama, client: aiohttp.ClientSession) -> None:
    """``/slots`` on a fresh server: one entry per slot, idle, with its context."""
    status, slots, _ = await get_json(client, llama.url + "/slots")
    assert status == 200
    assert slots == [
        {"id": 0, "n_ctx": SLOT_CTX, "speculative": False, "is_processing": False},
        {"id": 1, "n_ctx": SLOT_CTX, "speculative": False, "is_processing": False},
    ]


async def test_metrics_carry_the_llamacpp_series(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/metrics``: the ``llamacpp:`` series in llama-server's order, zero at start."""
    async with client.get(llama.url + "/metrics") as resp:
        assert resp.headers["Process-Start-Time-Unix"].isdigit()
    samples = await scrape(client, llama)
    assert list(samples) == METRIC_NAMES
    assert set(samples.values()) == {0.0}


async def test_models_list_openai_and_ollama_shapes(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/v1/models``: an Ollama-style ``models`` list and the OpenAI ``data`` list."""
    status, body, _ = await get_json(client, llama.url + "/v1/models")
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
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """A streamed chat with usage: role chunk, a chunk per token, an empty finish delta, then
    usage and timings with ``choices: []``, then ``[DONE]``; the model name is not checked."""
    body = chat("Hello there", stream=True, stream_options={"include_usage": True})
    status, raw, headers = await post_raw(client, llama.url + "/v1/chat/completions", body)
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
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """Without ``include_usage`` the finish chunk carries ``timings`` and no usage follows."""
    body = chat("Hello there", max_tokens=2, stream=True)
    _, raw, _ = await post_raw(client, llama.url + "/v1/chat/completions", body)
    _role, *tokens, finish = events(raw)
    assert len(tokens) == 2
    assert list(finish) == [*CHAT_CHUNK_KEYS, "timings"]
    assert finish["timings"]["predicted_n"] == 2


async def test_chat_whole_answer_has_usage_id_then_timings(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """A whole chat answer: llama-server's key order, usage with cached tokens, timings."""
    status, raw, headers = await post_raw(client, llama.url + "/v1/chat/completions", chat("Hi"))
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
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/v1/completions``: token events end with ``id``; the finish event always carries
    usage and timings; the whole answer is that event with the full text."""
    body = {"prompt": "Hello", "max_tokens": 2, "stream": True}
    _, raw, _ = await post_raw(client, llama.url + "/v1/completions", body)
    *tokens, finish = events(raw)
    assert len(tokens) == 2
    token_keys = ["choices", "created", "model", "system_fingerprint", "object", "id"]
    assert all(list(t) == token_keys for t in tokens)
    assert list(tokens[0]["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
    assert list(finish) == [*ANSWER_KEYS, "timings"]
    assert finish["choices"][0] | {"text": ""} == finish["choices"][0]
    assert finish["choices"][0]["finish_reason"] == "length"
    status, raw, _ = await post_raw(client, llama.url + "/v1/completions", body | {"stream": False})
    answer = orjson.loads(raw)
    assert status == 200
    assert list(answer) == [*ANSWER_KEYS, "timings"]
    assert answer["object"] == "text_completion"
    assert answer["usage"]["completion_tokens"] == 2


async def test_native_completion_streams_without_done(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/completion``: per-token events with ``tokens``, a final event with the settings and
    timings, and no ``[DONE]``; the whole answer is that final event."""
    body = {"prompt": "Hello", "n_predict": 2, "stream": True}
    _, raw, _ = await post_raw(client, llama.url + "/completion", body)
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
    _, raw, _ = await post_raw(client, llama.url + "/completion", body | {"stream": False})
    whole = orjson.loads(raw)
    assert list(whole) == list(final)
    assert whole["generation_settings"]["n_predict"] == 2


async def test_embeddings_answer_one_vector_per_input(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """``/v1/embeddings``: unit vectors per input, usage, the requested model echoed."""
    body = {"input": ["Hello", "world wide"], "model": "whatever"}
    status, raw, _ = await post_raw(client, llama.url + "/v1/embeddings", body)
    assert status == 200
    answer = orjson.loads(raw)
    assert list(answer) == ["model", "object", "usage", "data"]
    assert (answer["model"], answer["object"]) == ("whatever", "list")
    assert [list(d) for d in answer["data"]] == [["embedding", "index", "object"]] * 2
    assert [d["index"] for d in answer["data"]] == [0, 1]
    norm = sum(v * v for v in answer["data"][0]["embedding"])
    assert norm == pytest.approx(1.0, abs=1e-3)
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


async def test_tokenize_gives_ids_and_pieces(llama: Llama, client: aiohttp.ClientSession) -> None:
    """``/tokenize``: token ids, or ``{id, piece}`` pairs whose pieces spell the text."""
    _, raw, _ = await post_raw(client, llama.url + "/tokenize", {"content": "Hello there"})
    tokens = orjson.loads(raw)["tokens"]
    assert tokens
    assert all(isinstance(t, int) for t in tokens)
    body = {"content": "Hello there", "with_pieces": True}
    _, raw, _ = await post_raw(client, llama.url + "/tokenize", body)
    pieces = orjson.loads(raw)["tokens"]
    assert [p["id"] for p in pieces] == tokens
    assert "".join(p["piece"] for p in pieces).strip() == "Hello there"


async def test_a_prompt_longer_than_a_slot_is_refused(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """A prompt over a slot's context: 400 ``exceed_context_size_error`` with the counts, and
    the connection is closed."""
    body = chat("the " * 5000, stream=True)
    status, raw, headers = await post_raw(client, llama.url + "/v1/chat/completions", body)
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


async def test_errors_use_the_llama_cpp_envelope(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """Unknown routes and wrong methods are 404 ``File Not Found``; a missing or empty field
    is 400; a body that is not JSON is a 500."""
    for method, path in (("GET", "/nope"), ("GET", "/v1/chat/completions")):
        async with client.request(method, llama.url + path) as resp:
            assert resp.status == 404
            assert await resp.read() == (
                b'{"error":{"message":"File Not Found","type":"not_found_error","code":404}}'
            )
    status, raw, _ = await post_raw(client, llama.url + "/v1/chat/completions", {"model": "x"})
    assert status == 400
    assert orjson.loads(raw) == {
        "error": {"code": 400, "message": "'messages' is required", "type": "invalid_request_error"}
    }
    body = {"prompt": [], "max_tokens": 1}
    status, raw, _ = await post_raw(client, llama.url + "/v1/completions", body)
    assert status == 400
    assert orjson.loads(raw)["error"]["message"] == '"prompt" must not be empty'
    status, raw, _ = await post_raw(client, llama.url + "/v1/completions", b"{bad")
    assert status == 500
    assert orjson.loads(raw)["error"]["type"] == "server_error"
