"""The llamacpp face against the real llama-server, in behaviour: connections, slots and
deferral, the prompt cache, loading. The same tests run on both (``llama`` is each kind in turn,
fresh for every test)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.emulator import EmulatorConfig, serve
from bench.llamacpp.servers import wait_ready

from .conftest import post_raw
from .llamacpp_servers import CAPACITY, LONG_TEXT, Llama, chat, get_json, scrape


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
    llama: Llama, client: aiohttp.ClientSession
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
            seen.update(await scrape(client, llama))
            return seen["requests_processing"] == 2 and seen["requests_deferred"] == 2

        deadline = asyncio.get_running_loop().time() + 15
        while not await both_states():
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.05)
        _, slots, _ = await get_json(client, llama.url + "/slots")
        assert [s["is_processing"] for s in slots] == [True, True]
        assert all(s["next_token"][0]["n_remain"] > 0 for s in slots)
        assert len(started) <= 2
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    idle: list[bool] = []

    async def all_idle() -> bool:
        _, slots, _ = await get_json(client, llama.url + "/slots")
        idle[:] = [not s["is_processing"] for s in slots]
        return all(idle)

    deadline = asyncio.get_running_loop().time() + 15
    while not await all_idle():
        assert asyncio.get_running_loop().time() < deadline, idle
        await asyncio.sleep(0.05)
    samples = await scrape(client, llama)
    assert (samples["requests_processing"], samples["requests_deferred"]) == (0, 0)


async def test_a_repeated_prompt_is_read_from_the_slot_cache(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """The same long prompt twice: the second reuses all of it but its last token, and the
    metrics count the reused tokens; ``cache_prompt: false`` reuses nothing."""
    url = llama.url + "/v1/chat/completions"
    _, raw, _ = await post_raw(client, url, chat(LONG_TEXT, max_tokens=2))
    first = orjson.loads(raw)
    _, raw, _ = await post_raw(client, url, chat(LONG_TEXT, max_tokens=2))
    second = orjson.loads(raw)
    prompt = second["usage"]["prompt_tokens"]
    assert prompt > 100
    assert first["timings"]["cache_n"] == 0
    assert second["timings"]["cache_n"] == prompt - 1
    assert second["timings"]["prompt_n"] == 1
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt - 1
    samples = await scrape(client, llama)
    assert samples["prompt_tokens_cached_total"] == prompt - 1
    assert samples["prompt_tokens_total"] == prompt + 1
    assert samples["tokens_predicted_total"] == 4
    _, raw, _ = await post_raw(client, url, chat(LONG_TEXT, max_tokens=2, cache_prompt=False))
    assert orjson.loads(raw)["timings"]["cache_n"] == 0


async def test_a_follow_up_turn_finds_its_conversation_cached(
    llama: Llama, client: aiohttp.ClientSession
) -> None:
    """Two conversations interleaved over two slots: each next turn, which repeats its
    conversation so far, reuses at least that conversation's first prompt."""
    url = llama.url + "/v1/chat/completions"
    turns: dict[str, list[dict[str, Any]]] = {}
    firsts: dict[str, int] = {}
    for name in ("alpha", "bravo"):
        turns[name] = [{"role": "user", "content": f"{name} says " + LONG_TEXT}]
        _, raw, _ = await post_raw(client, url, {"messages": turns[name], "max_tokens": 4})
        answer = orjson.loads(raw)
        firsts[name] = answer["usage"]["prompt_tokens"]
        reply = answer["choices"][0]["message"]["content"]
        turns[name] += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "and then?"},
        ]
    for name in ("alpha", "bravo"):
        _, raw, _ = await post_raw(client, url, {"messages": turns[name], "max_tokens": 2})
        assert orjson.loads(raw)["timings"]["cache_n"] >= firsts[name] - 1


async def test_a_loading_emulated_server_answers_503_everywhere(
    tmp_path: Path, client: aiohttp.ClientSession
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
            async with client.get(running.url + path) as resp:
                assert resp.status == 503
                assert resp.headers["Server"] == "llama.cpp"
                assert await resp.read() == (
                    b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}'
                )
        await asyncio.wait_for(wait_ready(running.url), 5)
