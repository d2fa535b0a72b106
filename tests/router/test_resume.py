"""A stream cut after its first token goes on at another node serving the model, and the client
reads one stream: one id, one role chunk, the text in order, one [DONE], usage for all of it."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from router.app import RunningRouter, serve
from router.settings import GroupSettings
from tests.conftest import router_settings
from tests.fakes import register, script, scripted
from tests.router.test_first_token import CHAT, DONE, ROLE, chat, chunk, counter, metrics_of

CUT_EVENT = (
    b'data: {"error":{"message":"backend dropped after the stream started","type":"api_error",'
    b'"param":null,"code":"backend_stream_cut"}}\n\n'
)


def usage(prompt: int, completion: int) -> bytes:
    counts = {"prompt_tokens": prompt, "completion_tokens": completion,
              "total_tokens": prompt + completion}  # fmt: skip
    event = {"id": "other", "object": "chat.completion.chunk", "created": 9, "model": "m-small",
             "choices": [], "usage": counts}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


def other_id(event: bytes) -> bytes:
    """The same event as another node numbers it."""
    return event.replace(b'"chatcmpl-x"', b'"chatcmpl-y"').replace(b'"created":7', b'"created":9')


CUT = (ROLE, chunk("Hel"), chunk("lo"), None)
GOES_ON = tuple(other_id(e) for e in (ROLE, chunk(" wor"), chunk("ld", "stop"), usage(12, 2), DONE))


def events(raw: bytes) -> list[Any]:
    found: list[Any] = []
    for event in raw.decode().split("\n\n"):
        payload = event.removeprefix("data: ").strip()
        if payload:
            found.append("[DONE]" if payload == "[DONE]" else orjson.loads(payload))
    return found


def content(found: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in found
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


async def streamed(
    session: aiohttp.ClientSession, router: RunningRouter, body: dict[str, Any]
) -> list[Any]:
    async with session.post(router.url + CHAT, json=body) as resp:
        assert resp.status == 200
        return events(await resp.read())


class TestResume:
    async def test_a_cut_stream_goes_on_at_another_node_as_one_stream(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node that dies after two tokens: the next node gets the conversation with the
        text so far as the start of the assistant's turn (continue_final_message,
        add_generation_prompt false) and the cap lowered by two; the client reads one stream
        (one id, one role chunk, one [DONE], no error) whose usage counts all of it."""
        body = {**chat(), "stream_options": {"include_usage": True}}
        async with scripted("cut", script(*CUT)) as cut, scripted("next", script(*GOES_ON)) as nxt:
            await register(session, router.url, cut)
            await register(session, router.url, nxt, in_flight=1)  # so "cut" is tried first
            found = await streamed(session, router, body)
            metrics = await metrics_of(session, router)
        assert content(found) == "Hello world"
        assert found[-1] == "[DONE]"
        assert found.count("[DONE]") == 1
        chunks = [e for e in found if isinstance(e, dict)]
        assert {e["id"] for e in chunks} == {"chatcmpl-x"}
        assert {e["created"] for e in chunks} == {7}
        assert sum("role" in c["delta"] for e in chunks for c in e["choices"]) == 1
        assert not any("error" in e for e in chunks)
        assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4,
                                       "total_tokens": 14}  # fmt: skip
        asked = nxt.seen[0]["body"]
        assert asked["messages"][-1] == {"role": "assistant", "content": "Hello"}
        assert asked["messages"][:-1] == body["messages"]
        assert (asked["continue_final_message"], asked["add_generation_prompt"]) == (True, False)
        assert asked["max_tokens"] == body["max_tokens"] - 2
        assert counter(metrics, "router_streams_resumed_total", node="cut") == 1
        assert counter(metrics, "router_streams_cut_total") == 0

    async def test_an_agents_cut_event_is_resumed_not_relayed(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The error event a node's agent ends a stream with when its backend dropped is a cut:
        the client never sees it, and the answer goes on elsewhere."""
        cut_by_agent = (ROLE, chunk("Hel"), chunk("lo"), CUT_EVENT)
        async with (
            scripted("cut", script(*cut_by_agent)) as cut,
            scripted("next", script(*GOES_ON)) as nxt,
        ):
            await register(session, router.url, cut)
            await register(session, router.url, nxt, in_flight=1)
            found = await streamed(session, router, chat())
        assert content(found) == "Hello world"
        assert not any(isinstance(e, dict) and "error" in e for e in found)

    async def test_a_continuation_cut_again_goes_on_at_a_third_node(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A continuation that is cut in turn goes on at the next node, with all the text so
        far and the cap lowered by all of it."""
        second = (other_id(ROLE), other_id(chunk(" wor")), None)
        third = tuple(other_id(e) for e in (chunk("ld", "stop", role="assistant"), DONE))
        async with (
            scripted("a", script(*CUT)) as a,
            scripted("b", script(*second)) as b,
            scripted("c", script(*third)) as c,
        ):
            await register(session, router.url, a)
            await register(session, router.url, b, in_flight=1)
            await register(session, router.url, c, in_flight=2)
            found = await streamed(session, router, chat())
        assert content(found) == "Hello world"
        assert (len(a.seen), len(b.seen), len(c.seen)) == (1, 1, 1)
        asked = c.seen[0]["body"]
        assert asked["messages"][-1]["content"] == "Hello wor"
        assert asked["max_tokens"] == chat()["max_tokens"] - 3
        chunks = [e for e in found if isinstance(e, dict)]
        assert sum("role" in ch["delta"] for e in chunks for ch in e["choices"]) == 1


class TestNoResume:
    async def test_no_node_that_can_continue_ends_with_the_error_event(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """When the only other node cannot continue an assistant message (LM Studio), the
        client gets the SSE error event and [DONE], counted as a cut stream."""
        async with scripted("cut", script(*CUT)) as cut, scripted("lms", script(*GOES_ON)) as lms:
            await register(session, router.url, cut)
            await register(session, router.url, lms, in_flight=1, kind="lmstudio")
            found = await streamed(session, router, chat())
            metrics = await metrics_of(session, router)
        assert content(found) == "Hello"
        assert found[-2]["error"]["code"] == "stream_interrupted"
        assert found[-1] == "[DONE]"
        assert lms.seen == []
        assert counter(metrics, "router_streams_cut_total", node="cut") == 1

    async def test_a_group_with_resume_off_ends_with_the_error_event(
        self, session: aiohttp.ClientSession
    ) -> None:
        """``resume = false`` on a group: a cut stream ends with the error event as before."""
        group = GroupSettings(name="inference-cluster", resume=False)
        async with (
            serve(router_settings(groups=(group,))) as router,
            scripted("cut", script(*CUT)) as cut,
            scripted("next", script(*GOES_ON)) as nxt,
        ):
            await register(session, router.url, cut)
            await register(session, router.url, nxt, in_flight=1)
            found = await streamed(session, router, chat())
        assert found[-2]["error"]["code"] == "stream_interrupted"
        assert nxt.seen == []

    async def test_an_answer_with_a_tool_call_so_far_is_not_resumed(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A stream that showed more than text (a tool call) is not continued as text."""
        tool = [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]
        cut_tool = (ROLE, chunk(None, tool_calls=tool), None)
        async with (
            scripted("cut", script(*cut_tool)) as cut,
            scripted("next", script(*GOES_ON)) as nxt,
        ):
            await register(session, router.url, cut)
            await register(session, router.url, nxt, in_flight=1)
            found = await streamed(session, router, chat())
        assert found[-2]["error"]["code"] == "stream_interrupted"
        assert nxt.seen == []
