"""The emulated model goes on with its own words: an answer cut after k tokens and sent back as
the start of the assistant's turn (where the face's backend continues it) goes on exactly where
it stopped, so a spliced answer is the uninterrupted one. Where the backend starts a new turn
instead, so does the face."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig, serve
from bench.emulator.app import RunningEmulator
from bench.emulator.continuation import continued_tokens
from bench.emulator.tokens import token_text
from bench.llamacpp.servers import wait_ready

from .conftest import fast_config, post_raw
from .llamacpp_servers import Llama, chat

N = 10
CUT = 4
USER = [{"role": "user", "content": "tell me"}]


@contextlib.asynccontextmanager
async def serving(config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """The emulator, ready (llama-server answers 503 while its model loads)."""
    async with serve(config) as em:
        if config.kind == "llamacpp":
            await asyncio.wait_for(wait_ready(em.url), 5)
        yield em


def words(start: int, stop: int) -> str:
    return "".join(token_text(i) for i in range(start, stop))


@pytest.mark.parametrize(
    ("text", "continued"),
    [("", 0), ("hi", 0), (" the", 1), ("prompt" + words(0, 5), 5), (words(0, 40), 40),
     ("the quick", 0), (words(1, 5), 0)],
)  # fmt: skip
def test_continued_tokens(text: str, continued: int) -> None:
    """A text is continued from the number of the model's words it ends with, from the first."""
    assert continued_tokens(text) == continued


def _text(raw: bytes) -> str:
    """The text of an OpenAI stream, an Ollama NDJSON stream, or a TGI/Triton native stream."""
    text = ""
    for line in raw.decode().splitlines():
        payload = line.removeprefix("data:").strip()
        if not payload.startswith("{"):
            continue
        event = orjson.loads(payload)
        for choice in event.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        message = event.get("message") or {}
        text += message.get("content") or event.get("response") or ""
        text += (event.get("token") or {}).get("text") or event.get("text_output") or ""
    return text


async def _stream(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    status, raw, _ = await post_raw(client, url, {**body, "stream": True})
    assert status == 200, raw
    return _text(raw)


def _chat(messages: list[dict[str, str]], cap: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "max_tokens": cap, **extra}


def _prefilled(text: str, **extra: Any) -> dict[str, Any]:
    return _chat([*USER, {"role": "assistant", "content": text}], N - CUT, **extra)


CHAT_ROUTES = [
    # (kind, path, what asks the backend to continue a final assistant message)
    ("vllm", "/v1/chat/completions", {"continue_final_message": True,
                                      "add_generation_prompt": False}),
    ("tgi", "/v1/chat/completions", {"continue_final_message": True}),
    ("ollama", "/v1/chat/completions", {}),
    ("llamacpp", "/v1/chat/completions", {}),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "flags"), CHAT_ROUTES)
async def test_a_prefilled_chat_goes_on_where_the_cut_answer_stopped(
    kind: str, path: str, flags: dict[str, Any], client: aiohttp.ClientSession
) -> None:
    """The first CUT words sent back as the assistant's turn: the answer is the rest of the
    uninterrupted one, so the two together are it."""
    config = fast_config(kind)
    model, cut = config.models[0], len(words(0, CUT))
    async with serving(config) as em:
        whole = await _stream(client, em.url + path, {**_chat(USER, N), "model": model})
        assert whole == words(0, N)
        going_on = {**_prefilled(whole[:cut], **flags), "model": model}
        rest = await _stream(client, em.url + path, going_on)
    assert whole[:cut] + rest == whole


async def test_vllm_starts_a_new_turn_unless_told_to_continue(
    client: aiohttp.ClientSession,
) -> None:
    """vLLM adds a generation prompt by default: a final assistant message is then followed by
    a new turn; asked to continue while adding one, it refuses (400)."""
    config = fast_config("vllm")
    model = config.models[0]
    async with serving(config) as em:
        url = em.url + "/v1/chat/completions"
        new_turn = await _stream(client, url, {**_prefilled(words(0, CUT)), "model": model})
        both = {**_prefilled(words(0, CUT), continue_final_message=True), "model": model}
        status, raw, _ = await post_raw(client, url, both)
    assert new_turn == words(0, N - CUT)
    assert status == 400
    assert "add_generation_prompt" in orjson.loads(raw)["error"]["message"]


NATIVE_ROUTES = [
    # (kind, path, body with the prompt ending in the cut answer, answer's cap)
    ("ollama", "/api/chat", lambda m, t: {"model": m, "messages": [*USER, {"role": "assistant",
     "content": t}], "options": {"num_predict": N - CUT}}),
    ("ollama", "/api/generate", lambda m, t: {"model": m, "prompt": "[INST] tell me [/INST]" + t,
     "raw": True, "options": {"num_predict": N - CUT}}),
    ("tgi", "/generate_stream", lambda m, t: {"inputs": "<s>[INST] tell me [/INST]" + t,
     "parameters": {"max_new_tokens": N - CUT}}),
    ("vllm", "/v1/completions", lambda m, t: {"model": m, "prompt": "Once" + t,
     "max_tokens": N - CUT}),
    ("llamacpp", "/v1/completions", lambda m, t: {"model": m, "prompt": "Once" + t,
     "max_tokens": N - CUT}),
    ("triton", "/v2/models/{m}/generate_stream", lambda m, t: {"text_input": "Once" + t,
     "parameters": {"max_tokens": N - CUT}}),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "body"), NATIVE_ROUTES)
async def test_a_prompt_that_ends_with_the_cut_answer_goes_on_from_it(
    kind: str, path: str, body: Any, client: aiohttp.ClientSession
) -> None:
    """Ollama's chat (a final assistant message) and raw generate, TGI's generate, completions
    and Triton's generate go on from the model's words a prompt ends with."""
    config = fast_config(kind)
    model = config.models[0]
    if kind == "triton":
        config = fast_config(kind, preload=(model,))
    async with serving(config) as em:
        rest = await _stream(client, em.url + path.format(m=model), body(model, words(0, CUT)))
    assert rest == words(CUT, N)


async def test_ollama_generate_without_raw_starts_anew(client: aiohttp.ClientSession) -> None:
    """A generate prompt that is not raw goes through the template: a new answer."""
    config = fast_config("ollama")
    model = config.models[0]
    async with serving(config) as em:
        body = {"model": model, "prompt": words(0, CUT), "options": {"num_predict": 3}}
        assert await _stream(client, em.url + "/api/generate", body) == words(0, 3)


async def test_llama_server_prefills_a_final_assistant_message(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """llama-server continues a final assistant message by itself (its assistant prefill is on
    by default: two at the end are refused as a prefill would be), and ``continue_final_message``
    needs ``add_generation_prompt: false``: the same on the real server and the face."""
    url = llama.url + "/v1/chat/completions"
    twice = [*chat("hi")["messages"], {"role": "assistant", "content": "a"},
             {"role": "assistant", "content": "b"}]  # fmt: skip
    status, raw, _ = await post_raw(client, url, {**chat("hi"), "messages": twice})
    assert status == 400
    assert orjson.loads(raw)["error"]["message"] == (
        "Cannot have 2 or more assistant messages at the end of the list."
    )
    status, raw, _ = await post_raw(client, url, {**chat("hi"), "continue_final_message": True})
    assert status == 400
    assert orjson.loads(raw)["error"]["message"] == (
        "Cannot set both add_generation_prompt and continue_final_message to true."
    )
    prefilled = [*chat("hi")["messages"], {"role": "assistant", "content": "Sure"}]
    asked = {**chat("hi"), "messages": prefilled, "continue_final_message": True,
             "add_generation_prompt": False}  # fmt: skip
    for body in ({**chat("hi"), "messages": prefilled}, asked):
        status, raw, _ = await post_raw(client, url, body)
        assert status == 200, raw
