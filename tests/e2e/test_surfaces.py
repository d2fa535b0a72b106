"""The official ``anthropic`` SDK and the ``openai`` SDK's Responses API through the router, the
agents and the demo-shaped emulated cluster: ``llama3.1:70b`` lives on a vLLM box, whose engine
speaks both surfaces (passed through), ``llama3.1:8b`` on an Ollama box, whose emulated engine
speaks neither (its agent translates to chat)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.e2e.conftest import GROUP, LocalCluster

NATIVE = "llama3.1:70b"  # gpu-box-3, vLLM
TRANSLATED = "llama3.1:8b"  # gpu-box-1, Ollama
BOX = {NATIVE: "gpu-box-3", TRANSLATED: "gpu-box-1"}
MODELS = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
HELLO: list[Any] = [{"role": "user", "content": "Hello"}]


def anthropic_url(cluster: LocalCluster) -> str:
    """What a Claude Code user sets as ANTHROPIC_BASE_URL: the group's URL."""
    return f"{cluster.router.url}/{GROUP}"


async def backend_paths(cluster: LocalCluster, model: str) -> list[str]:
    """The paths the model's emulated engine was asked, in order."""
    url = f"{cluster.emulators[BOX[model]].url}/_emulator/requests"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return [r["path"] for r in (await resp.json())["requests"]]


async def assert_served_as(cluster: LocalCluster, model: str, path: str) -> None:
    """The vLLM box got the surface's own path; the Ollama box only chat."""
    paths = await backend_paths(cluster, model)
    if model == NATIVE:
        assert path in paths
        assert "/v1/chat/completions" not in paths
    else:
        assert "/v1/chat/completions" in paths


class TestAnthropicSdk:
    @MODELS
    async def test_sync_create_with_a_tool(self, cluster: LocalCluster, model: str) -> None:
        """The sync client (in a thread: the cluster runs on this loop) gets a message, with a
        tool declared."""
        client = anthropic.Anthropic(base_url=anthropic_url(cluster), api_key="k", max_retries=0)

        def create() -> anthropic.types.Message:
            return client.messages.create(
                model=model, max_tokens=8, messages=HELLO, tools=[WEATHER]
            )

        try:
            message = await asyncio.to_thread(create)
        finally:
            client.close()
        assert message.type == "message"
        assert message.role == "assistant"
        assert message.model == model
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 8
        text = "".join(b.text for b in message.content if b.type == "text")
        assert len(text.split()) == 8
        await assert_served_as(cluster, model, "/v1/messages")

    @MODELS
    async def test_async_create_and_stream(self, cluster: LocalCluster, model: str) -> None:
        """The async client: a whole message, then a stream with a tool declared whose text
        events add up to its final message."""
        client = anthropic.AsyncAnthropic(base_url=anthropic_url(cluster), api_key="k")
        try:
            whole = await client.messages.create(
                model=model, max_tokens=5, system="Be brief.", messages=HELLO
            )
            async with client.messages.stream(
                model=model, max_tokens=12, messages=HELLO, tools=[WEATHER]
            ) as stream:
                pieces = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
        finally:
            await client.close()
        assert whole.usage.output_tokens == 5
        assert len(pieces) == 12
        assert final.content[0].type == "text"
        assert final.content[0].text == "".join(pieces)
        assert final.stop_reason == "max_tokens"
        assert final.usage.output_tokens == 12

    async def test_sync_stream(self, cluster: LocalCluster) -> None:
        """The sync client's raw event stream has Anthropic's events in their order."""
        client = anthropic.Anthropic(base_url=anthropic_url(cluster), api_key="k", max_retries=0)

        def events() -> list[str]:
            stream = client.messages.create(
                model=TRANSLATED, max_tokens=3, messages=HELLO, stream=True
            )
            return [event.type for event in stream]

        try:
            kinds = await asyncio.to_thread(events)
        finally:
            client.close()
        assert kinds == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]

    async def test_bad_request_raises_the_sdks_error(self, cluster: LocalCluster) -> None:
        """A request the router refuses reaches the SDK as its own BadRequestError, with
        Anthropic's error type."""
        client = anthropic.AsyncAnthropic(
            base_url=anthropic_url(cluster), api_key="k", max_retries=0
        )
        try:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.messages.create(
                    model=NATIVE, max_tokens=8, messages=[{"role": "system", "content": "x"}]
                )
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.create(model="nope", max_tokens=8, messages=HELLO)
        finally:
            await client.close()
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["error"]["type"] == "invalid_request_error"


class TestOpenAIResponses:
    @MODELS
    async def test_create(self, cluster: LocalCluster, model: str) -> None:
        """``client.responses.create`` answers a response with its text and usage."""
        client = openai.AsyncOpenAI(base_url=cluster.base_url, api_key="k", max_retries=0)
        try:
            response = await client.responses.create(
                model=model, input="Hello", instructions="Be brief.", max_output_tokens=6
            )
        finally:
            await client.close()
        assert response.object == "response"
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert len(response.output_text.split()) == 6
        assert response.usage is not None
        assert response.usage.output_tokens == 6
        await assert_served_as(cluster, model, "/v1/responses")

    @MODELS
    async def test_stream(self, cluster: LocalCluster, model: str) -> None:
        """A streamed response: its text deltas add up to the text of the final response."""
        client = openai.AsyncOpenAI(base_url=cluster.base_url, api_key="k", max_retries=0)
        tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}
        try:
            stream = await client.responses.create(
                model=model,
                input=[{"role": "user", "content": "Hello"}],
                max_output_tokens=7,
                stream=True,
                tools=[tool],  # type: ignore[list-item]
            )
            deltas, final = [], None
            async for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                elif event.type in ("response.completed", "response.incomplete"):
                    final = event.response
        finally:
            await client.close()
        assert len(deltas) == 7
        assert final is not None
        assert final.output_text == "".join(deltas)
        assert final.usage is not None
        assert final.usage.output_tokens == 7

    async def test_previous_response_id_is_refused(self, cluster: LocalCluster) -> None:
        """The stateless router refuses a previous_response_id with the SDK's BadRequestError."""
        client = openai.AsyncOpenAI(base_url=cluster.base_url, api_key="k", max_retries=0)
        try:
            with pytest.raises(openai.BadRequestError, match="stateless"):
                await client.responses.create(
                    model=NATIVE, input="again", previous_response_id="resp_1"
                )
        finally:
            await client.close()
