"""Conformance, serving: what a client gets through router and agents from every engine."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .client import CORRELATION, chat, completion, new_id, stream
from .engines import EMBEDDINGS, STREAM_USAGE, engines
from .fleet import Fleet

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_TOKENS = 8


async def post_json(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], correlation_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {CORRELATION: correlation_id or new_id()}
    async with http.post(url, json=body, headers=headers) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_models_list_names_the_engine_model(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """``GET /v1/models`` through the router lists the model the engine serves."""
    async with http.get(f"{fleet.base_url}/models") as resp:
        assert resp.status == 200
        ids = [card["id"] for card in (await resp.json())["data"]]
    assert fleet.model in ids


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_chat_answers_with_content_and_usage(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """A chat completion answers 200 with the assistant's text and usage counting it."""
    status, body = await post_json(
        http, f"{fleet.base_url}/chat/completions", chat(fleet.model, MAX_TOKENS)
    )
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["content"]
    assert choice["finish_reason"] in ("length", "stop")
    assert 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS
    assert body["usage"]["prompt_tokens"] >= 1


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_completion_answers_with_text_and_usage(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """A text completion answers 200 with text and usage counting it."""
    status, body = await post_json(
        http, f"{fleet.base_url}/completions", completion(fleet.model, MAX_TOKENS)
    )
    assert status == 200, body
    assert body["choices"][0]["text"]
    assert 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS


@pytest.mark.parametrize("path", ["chat/completions", "completions"])
@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_stream_carries_content_a_finish_reason_and_done(
    fleet: Fleet, http: aiohttp.ClientSession, path: str
) -> None:
    """A streamed answer carries content events, a finish reason and ``[DONE]``, no error."""
    make = chat if path == "chat/completions" else completion
    answer = await stream(
        http, f"{fleet.base_url}/{path}", make(fleet.model, MAX_TOKENS, stream=True)
    )
    assert answer.status == 200, answer.events
    assert answer.served, answer.events
    assert 1 <= len(answer.pieces) <= MAX_TOKENS


@pytest.mark.parametrize("fleet", engines(STREAM_USAGE), indirect=True)
async def test_stream_usage_counts_the_streamed_tokens(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """With ``stream_options.include_usage`` the stream ends with usage counting its tokens."""
    body = chat(fleet.model, MAX_TOKENS, stream=True, stream_options={"include_usage": True})
    answer = await stream(http, f"{fleet.base_url}/chat/completions", body)
    assert answer.served, answer.events
    assert answer.usage is not None, answer.events
    assert answer.usage["completion_tokens"] == len(answer.pieces)


@pytest.mark.parametrize("fleet", engines(EMBEDDINGS), indirect=True)
async def test_embeddings_answer_one_vector_per_input(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """``POST /v1/embeddings`` answers one vector per input, all of the same width."""
    body = {"model": fleet.model, "input": ["the sea", "a ship on the sea"]}
    status, answer = await post_json(http, f"{fleet.base_url}/embeddings", body)
    assert status == 200, answer
    vectors = [item["embedding"] for item in answer["data"]]
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) > 0
    assert all(isinstance(x, float) for x in vectors[0])


def _series(text: str, name: str, fleet: Fleet) -> float:
    """The sum of a metric's samples for the fleet's group and model."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            ours = labels.get("group") == fleet.group and labels.get("model") == fleet.model
            if sample.name == name and ours:
                total += sample.value
    return total


async def _metrics(http: aiohttp.ClientSession, fleet: Fleet) -> str:
    async with http.get(f"{fleet.router.url}/metrics") as resp:
        return await resp.text()


HISTOGRAMS = ("router_request_duration_seconds_count", "router_ttft_seconds_count")


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_every_request_records_ttft_tokens_and_duration(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Each request, streamed or not, leaves a log line with its TTFT and its token count, and
    counts once in the duration and TTFT histograms and by its tokens in the token counter."""
    before = await _metrics(http, fleet)
    sent: dict[str, int] = {}  # correlation id -> output tokens the client saw
    for path, make in (("chat/completions", chat), ("completions", completion)):
        url = f"{fleet.base_url}/{path}"
        cid = new_id()
        status, body = await post_json(http, url, make(fleet.model, MAX_TOKENS), cid)
        assert status == 200, body
        sent[cid] = body["usage"]["completion_tokens"]
        cid = new_id()
        answer = await stream(http, url, make(fleet.model, MAX_TOKENS, stream=True), cid)
        assert answer.served, answer.events
        sent[cid] = len(answer.pieces)
    for cid, tokens in sent.items():
        line = await fleet.record(cid)
        assert line["status"] == 200
        assert line["ttft_ms"] is not None, line
        assert line["ttft_ms"] > 0
        assert line["tokens"] == tokens, line
        assert line["duration_ms"] >= line["ttft_ms"], line
    after = await _metrics(http, fleet)
    for name in HISTOGRAMS:
        assert _series(after, name, fleet) - _series(before, name, fleet) == len(sent), name
    counted = _series(after, "router_output_tokens_total", fleet)
    assert counted - _series(before, "router_output_tokens_total", fleet) == sum(sent.values())


@pytest.mark.parametrize("fleet", engines(), indirect=True)
async def test_three_times_the_fleet_slots_in_concurrent_streams_are_all_served(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    """Three times as many concurrent streams as the fleet has slots: every one is answered
    in full, none empty, none cut."""
    url = f"{fleet.base_url}/chat/completions"
    count = 3 * fleet.spec.fleet_slots
    answers = await asyncio.gather(
        *(stream(http, url, chat(fleet.model, MAX_TOKENS, stream=True)) for _ in range(count))
    )
    assert [a.status for a in answers] == [200] * count
    unserved = [a.events for a in answers if not a.served]
    assert not unserved
