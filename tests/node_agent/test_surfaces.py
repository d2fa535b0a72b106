"""Anthropic Messages and OpenAI Responses on the agent: passed through to an engine that has the
routes (learnt once per path), translated to and from chat for one that has not, tool calls,
reasoning and usage included, errors and cut streams in the surface's own shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from node_agent.app import RunningAgent, serve
from tests.fakes import run_app

from .chat_engine import MODEL, NATIVE_MARK, USAGE, ChatEngine
from .conftest import agent_settings

TOOL = {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
HI = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def agent_for(engine: ChatEngine, kind: str = "openai") -> AsyncIterator[RunningAgent]:
    async with run_app(engine.app()) as url, serve(agent_settings(url, backend_kind=kind)) as a:
        yield a


async def post(agent: RunningAgent, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(agent.local_url + path, json=body) as resp,
    ):
        return resp.status, await resp.read()


def named_events(raw: bytes, *, cut: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a named-event SSE body (``cut``: skip an event cut
    short)."""
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"event: "):
            name, _, data = block.removeprefix(b"event: ").partition(b"\ndata: ")
            try:
                out.append((name.decode(), json.loads(data)))
            except json.JSONDecodeError:
                if not cut:
                    raise
    return out


def messages(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": HI} | fields


def responses(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", "max_output_tokens": 16} | fields


class TestNativeOrTranslated:
    async def test_engine_with_the_routes_gets_them_as_sent_asked_once(self) -> None:
        """An engine that refuses an empty body on both paths has them: requests go there
        untouched, and it is asked once per path however many requests follow."""
        engine = ChatEngine(native=True)
        async with agent_for(engine) as agent:
            for _ in range(3):
                for path, body in (("/v1/messages", messages()), ("/v1/responses", responses())):
                    status, raw = await post(agent, path, body)
                    assert (status, json.loads(raw)) == (200, NATIVE_MARK)
        assert engine.probes() == 2
        assert "/v1/chat/completions" not in engine.paths()

    @pytest.mark.parametrize("probe_status", [None, 200, 405])
    async def test_engine_without_the_routes_gets_chat(self, probe_status: int | None) -> None:
        """An engine that answers 404, 405 or 200 to anything on the paths lacks them: the
        agent translates to chat, and stops asking."""
        engine = ChatEngine(native=False, probe_status=probe_status)
        async with agent_for(engine) as agent:
            for _ in range(2):
                status, _ = await post(agent, "/v1/messages", messages())
                assert status == 200
        assert engine.probes() == 1
        assert engine.paths().count("/v1/chat/completions") == 2

    async def test_unsettled_answer_is_asked_again(self) -> None:
        """A 503 to the probe settles nothing: translated now, asked again next time."""
        engine = ChatEngine(native=True, probe_status=503)
        async with agent_for(engine) as agent:
            await post(agent, "/v1/responses", responses())
            await post(agent, "/v1/responses", responses())
        assert engine.probes() == 2

    async def test_tgi_is_translated_without_asking(self) -> None:
        """TGI's API has neither surface: no probe, straight to chat."""
        engine = ChatEngine(native=True)
        async with agent_for(engine, kind="tgi") as agent:
            assert (await post(agent, "/v1/messages", messages()))[0] == 200
            assert (await post(agent, "/v1/responses", responses()))[0] == 200
        assert engine.paths() == ["/v1/chat/completions"] * 2

    async def test_triton_is_404_in_the_surfaces_envelope(self) -> None:
        """Triton has no chat to translate to: Messages is a 404 in Anthropic's envelope."""
        async with agent_for(ChatEngine(), kind="triton") as agent:
            status, raw = await post(agent, "/v1/messages", messages())
        assert status == 404
        assert json.loads(raw)["type"] == "error"
        assert json.loads(raw)["error"]["type"] == "not_found_error"


class TestMessagesTranslated:
    async def test_request_becomes_chat(self) -> None:
        """System, images, tool calls and their results, tools and the tool choice become the
        chat request engines take."""
        image = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
        turns = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "look"}, {"type": "image", "source": image}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "calling"},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "sun"}],
                    },
                    {"type": "text", "text": "and now?"},
                ],
            },
        ]
        body = messages(
            system=[{"type": "text", "text": "be brief"}],
            messages=turns,
            tools=[TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.5,
        )
        engine = ChatEngine()
        async with agent_for(engine, kind="tgi") as agent:
            assert (await post(agent, "/v1/messages", body))[0] == 200
        ((_, chat),) = engine.asked
        assert chat == {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "calling",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "sun"},
                {"role": "user", "content": "and now?"},
            ],
            "max_tokens": 16,
            "temperature": 0.5,
            "stop": ["END"],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "w",
                        "parameters": {"type": "object"},
                    },
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }

    async def test_whole_answer_with_a_tool_call(self) -> None:
        """A chat answer with reasoning, text and a tool call is a message with thinking, text
        and tool_use blocks, stop_reason tool_use and Anthropic's counts."""
        async with agent_for(ChatEngine(), kind="tgi") as agent:
            status, raw = await post(agent, "/v1/messages", messages(tools=[TOOL]))
        answer = json.loads(raw)
        assert status == 200
        assert [b["type"] for b in answer["content"]] == ["thinking", "text", "tool_use"]
        assert answer["content"][2] | {"id": ""} == {
            "type": "tool_use",
            "id": "",
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        assert answer["content"][2]["id"] == "call_a"
        assert (answer["stop_reason"], answer["model"]) == ("tool_use", MODEL)
        assert answer["usage"] == {
            "input_tokens": 8,
            "output_tokens": 9,
            "cache_read_input_tokens": 12,
        }

    async def test_stream_with_reasoning_text_and_two_tool_calls(self) -> None:
        """The chat stream becomes Messages events: one block per run of output, the calls'
        arguments as input_json deltas, then message_delta with the reason and the counts."""
        async with agent_for(ChatEngine(), kind="tgi") as agent:
            status, raw = await post(agent, "/v1/messages", messages(stream=True, tools=[TOOL]))
            assert agent.stats.output_tokens == USAGE["completion_tokens"]
            assert agent.stats.in_flight == 0
        events = named_events(raw)
        assert status == 200
        assert all(name == data["type"] for name, data in events)
        starts = [d["content_block"] for n, d in events if n == "content_block_start"]
        assert [b["type"] for b in starts] == ["thinking", "text", "tool_use", "tool_use"]
        assert [b.get("id") for b in starts[2:]] == ["call_a", "call_b"]
        deltas = [d for n, d in events if n == "content_block_delta"]
        args = {}
        for d in deltas:
            if d["delta"]["type"] == "input_json_delta":
                args[d["index"]] = args.get(d["index"], "") + d["delta"]["partial_json"]
        assert args == {2: '{"city": "Paris"}', 3: '{"city": "Oslo"}'}
        stops = [d["index"] for n, d in events if n == "content_block_stop"]
        assert stops == [0, 1, 2, 3]
        names = [n for n, _ in events]
        assert names[0] == "message_start"
        assert names[-2:] == ["message_delta", "message_stop"]
        end = events[-2][1]
        assert end["delta"]["stop_reason"] == "tool_use"
        assert end["usage"]["output_tokens"] == 9

    async def test_engine_refusal_keeps_its_status_in_anthropics_envelope(self) -> None:
        """The engine's 400 on the chat call is the client's 400, in Anthropic's envelope."""
        async with agent_for(ChatEngine(chat_status=400), kind="tgi") as agent:
            status, raw = await post(agent, "/v1/messages", messages())
        assert status == 400
        assert json.loads(raw) == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "bad chat"},
        }

    @pytest.mark.parametrize(
        ("path", "body"),
        [("/v1/messages", messages(stream=True)), ("/v1/responses", responses(stream=True))],
    )
    async def test_cut_stream_ends_with_the_surfaces_error_event(
        self, path: str, body: dict[str, Any]
    ) -> None:
        """The engine drops the chat stream midway: the translated stream ends with the
        surface's error event, not a made-up end."""
        async with agent_for(ChatEngine(cut_after=5), kind="tgi") as agent:
            status, raw = await post(agent, path, body)
        events = named_events(raw)
        assert status == 200
        assert events[-1][0] == "error"
        assert events[-1][1]["type"] == "error"
        assert not any(n in ("message_stop", "response.completed") for n, _ in events)


class TestNativeErrors:
    async def test_engines_openai_error_on_messages_becomes_anthropics(self) -> None:
        """llama-server answers errors on its Messages route in OpenAI's envelope: the agent
        rewrites it into Anthropic's, status kept."""
        async with agent_for(ChatEngine(native=True, native_status=400)) as agent:
            status, raw = await post(agent, "/v1/messages", messages())
        assert status == 400
        assert json.loads(raw) == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "the prompt is too long"},
        }

    async def test_native_stream_cut_ends_with_anthropics_error_event(self) -> None:
        """An engine that drops its own Messages stream midway: the agent ends the half event
        and adds Anthropic's error event."""
        async with agent_for(ChatEngine(native=True)) as agent:
            status, raw = await post(agent, "/v1/messages", messages(stream=True))
        assert status == 200
        last = named_events(raw, cut=True)[-1]
        assert last[0] == "error"
        assert last[1]["error"]["type"] == "api_error"
