"""OpenAI Responses on an agent whose engine lacks it: the request becomes chat (input items,
function calls and their outputs, tools, formats) and the answer a ``response`` or its event
stream, tool calls and usage included."""

from __future__ import annotations

import json

from .chat_engine import MODEL, ChatEngine
from .test_surfaces import agent_for, named_events, post, responses


class TestResponsesTranslated:
    async def test_request_becomes_chat(self) -> None:
        """Instructions, messages, earlier function calls and their outputs, function tools,
        the tool choice and a JSON schema format become the chat request."""
        items = [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]
        tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
        schema = {"type": "json_schema", "name": "w", "schema": {"type": "object"}}
        body = responses(
            input=items,
            instructions="be brief",
            tools=[tool],
            tool_choice={"type": "function", "name": "get_weather"},
            text={"format": schema},
            store=True,
        )
        engine = ChatEngine()
        async with agent_for(engine, kind="tgi") as agent:
            assert (await post(agent, "/v1/responses", body))[0] == 200
        ((_, chat),) = engine.asked
        assert chat == {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": "rules"},
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sun"},
            ],
            "max_tokens": 16,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": {"type": "object"}},
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": {"type": "object"}},
            },
        }

    async def test_whole_answer_with_a_tool_call(self) -> None:
        """The answer is a response with reasoning, message and function_call items."""
        async with agent_for(ChatEngine(), kind="tgi") as agent:
            status, raw = await post(agent, "/v1/responses", responses())
        answer = json.loads(raw)
        assert (status, answer["object"], answer["status"]) == (200, "response", "completed")
        assert [i["type"] for i in answer["output"]] == ["reasoning", "message", "function_call"]
        call = answer["output"][2]
        assert (call["call_id"], call["name"], call["arguments"]) == (
            "call_a",
            "get_weather",
            '{"city": "Paris"}',
        )
        assert answer["output"][1]["content"][0]["text"] == "Checking."
        assert answer["usage"]["input_tokens"] == 20
        assert answer["usage"]["input_tokens_details"] == {"cached_tokens": 12}
        assert (answer["usage"]["output_tokens"], answer["store"]) == (9, False)

    async def test_stream_items_and_sequence(self) -> None:
        """The chat stream becomes Responses events: an item per run of output, deltas that add
        up to each item's text and arguments, increasing sequence numbers, then
        response.completed holding every item and the usage."""
        async with agent_for(ChatEngine(), kind="tgi") as agent:
            status, raw = await post(agent, "/v1/responses", responses(stream=True))
        events = named_events(raw)
        assert status == 200
        assert [d["sequence_number"] for _, d in events] == list(range(1, len(events) + 1))
        added = [d["item"]["type"] for n, d in events if n == "response.output_item.added"]
        assert added == ["reasoning", "message", "function_call", "function_call"]
        text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
        assert text == "Checking."
        done_args = [
            d["arguments"] for n, d in events if n == "response.function_call_arguments.done"
        ]
        assert done_args == ['{"city": "Paris"}', '{"city": "Oslo"}']
        name, final = events[-1]
        assert name == "response.completed"
        assert [i["type"] for i in final["response"]["output"]] == added
        assert [i.get("call_id") for i in final["response"]["output"][2:]] == ["call_a", "call_b"]
        assert final["response"]["usage"]["output_tokens"] == 9

    async def test_non_function_tools_cannot_be_translated(self) -> None:
        """A built-in tool has no chat equivalent: 400 in the OpenAI envelope."""
        async with agent_for(ChatEngine(), kind="tgi") as agent:
            body = responses(tools=[{"type": "web_search"}])
            status, raw = await post(agent, "/v1/responses", body)
        assert status == 400
        assert "function tools" in json.loads(raw)["error"]["message"]
