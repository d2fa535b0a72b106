"""The vLLM face's Anthropic Messages and OpenAI Responses routes: the events real engines send,
in their order (as llama-server sends them), the official SDKs reading them, and their errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from bench.emulator import RunningEmulator, serve

from .conftest import VLLM_MODEL, post_raw, set_fault, vllm_config

HI = [{"role": "user", "content": "hi there"}]
# The order of events llama-server sends for a text answer (checked on the real server).
MESSAGES_ORDER = ["message_start", "content_block_start"]
MESSAGES_END = ["content_block_stop", "message_delta", "message_stop"]
RESPONSES_START = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESPONSES_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
async def vllm() -> AsyncIterator[RunningEmulator]:
    async with serve(vllm_config()) as running:
        yield running


def named(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.rstrip(b"\n").split(b"\n\n"):
        name, _, data = block.removeprefix(b"event: ").partition(b"\ndata: ")
        out.append((name.decode(), json.loads(data)))
    return out


class TestMessages:
    async def test_stream_events_in_llama_servers_order(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        """A streamed message: start, one text block with a delta per token, its stop, the
        reason and count, the end; each event named as its type."""
        body = {"model": VLLM_MODEL, "max_tokens": 3, "stream": True, "messages": HI}
        status, raw, headers = await post_raw(http, vllm.url + "/v1/messages", body)
        events = named(raw)
        assert status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        assert [n for n, _ in events] == [
            *MESSAGES_ORDER,
            *["content_block_delta"] * 3,
            *MESSAGES_END,
        ]
        assert all(name == data["type"] for name, data in events)
        assert events[0][1]["message"]["usage"] == {"input_tokens": 2, "output_tokens": 0}
        assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
        assert events[-2][1]["usage"] == {"output_tokens": 3}

    async def test_the_sdk_reads_a_message_and_a_stream(self, vllm: RunningEmulator) -> None:
        """The official SDK: a whole message and a streamed one."""
        async with anthropic.AsyncAnthropic(base_url=vllm.url, api_key="-") as client:
            message = await client.messages.create(model=VLLM_MODEL, max_tokens=4, messages=HI)
            async with client.messages.stream(
                model=VLLM_MODEL, max_tokens=5, messages=HI
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
        assert message.content[0].type == "text"
        assert message.content[0].text == " the quick brown fox"
        assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 4)
        assert text == " the quick brown fox jumps"
        assert final.usage.output_tokens == 5

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ({"model": VLLM_MODEL, "messages": HI}, 400),
            ({"model": "other", "max_tokens": 3, "messages": HI}, 404),
        ],
    )
    async def test_errors_in_anthropics_envelope(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession, body: Any, status: int
    ) -> None:
        """No max_tokens is a 400, an unknown model a 404, both in Anthropic's envelope."""
        got, raw, _ = await post_raw(http, vllm.url + "/v1/messages", body)
        answer = json.loads(raw)
        assert got == status
        assert answer["type"] == "error"
        assert set(answer["error"]) == {"type", "message"}


class TestResponses:
    async def test_stream_events_in_order(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        """A streamed response: created, in progress, the item and part opened, a delta per
        token, the text, part and item done, then the response with its usage."""
        body = {"model": VLLM_MODEL, "max_output_tokens": 2, "stream": True, "input": HI}
        status, raw, _ = await post_raw(http, vllm.url + "/v1/responses", body)
        events = named(raw)
        assert status == 200
        names = [n for n, _ in events]
        assert names == [
            *RESPONSES_START,
            *["response.output_text.delta"] * 2,
            *RESPONSES_END,
            "response.incomplete",
        ]
        assert [d["sequence_number"] for _, d in events] == list(range(1, len(events) + 1))
        assert events[-1][1]["response"]["usage"]["output_tokens"] == 2

    async def test_the_sdk_reads_a_response_and_a_stream(self, vllm: RunningEmulator) -> None:
        """The openai SDK's ``responses.create``, whole and streamed."""
        async with openai.AsyncOpenAI(base_url=vllm.url + "/v1", api_key="-") as client:
            whole = await client.responses.create(model=VLLM_MODEL, input="hi")
            stream = await client.responses.create(
                model=VLLM_MODEL, input="hi", max_output_tokens=3, stream=True
            )
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        assert whole.status == "completed"
        assert len(whole.output_text.split()) == 16  # the emulator's default answer
        assert deltas == [" the", " quick", " brown"]

    async def test_previous_response_id_is_refused(
        self, vllm: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        """Nothing is stored, so a previous_response_id is a 400 in vLLM's envelope."""
        body = {"model": VLLM_MODEL, "input": "hi", "previous_response_id": "resp_1"}
        status, raw, _ = await post_raw(http, vllm.url + "/v1/responses", body)
        assert status == 400
        assert json.loads(raw)["error"]["code"] == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": VLLM_MODEL, "max_tokens": 8, "messages": HI, "stream": True}),
        ("/v1/responses", {"model": VLLM_MODEL, "input": "hi", "stream": True}),
    ],
)
async def test_error_mid_stream_is_the_surfaces_error_event(
    vllm: RunningEmulator, http: aiohttp.ClientSession, path: str, body: Any
) -> None:
    """An injected mid-stream failure ends the stream with the surface's ``error`` event."""
    await set_fault(http, vllm.url, mode="error_mid_stream", after=2)
    status, raw, _ = await post_raw(http, vllm.url + path, body)
    name, data = named(raw)[-1]
    assert (status, name, data["type"]) == (200, "error", "error")
