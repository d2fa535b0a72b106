from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from node_agent.app import serve
from node_agent.errors import BackendBadAnswer, BackendRefused, BadRequest
from node_agent.triton_ask import Ask, Tally, chat_prompt
from node_agent.triton_openai import refusal
from node_protocol.wire import STREAM_CUT_CODE

from .conftest import FakeBackend, TritonServers, agent_settings, wait_until

CHAT: dict[str, Any] = {
    "model": "llama3",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
}


def ask(chat: bool = True, **body: Any) -> Ask:
    return Ask.from_body(json.dumps(body).encode(), chat=chat)


def events(raw: bytes) -> list[Any]:
    """The data payloads of an SSE body ([DONE] kept as the string)."""
    out: list[Any] = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: "):
            payload = event.removeprefix(b"data: ")
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


class TestPrompt:
    """Messages become one role-tagged prompt that ends by cueing the assistant."""

    def test_role_tagged_join(self) -> None:
        parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts},
            {"role": "assistant", "content": None},
        ]
        assert chat_prompt(messages) == "system: Be brief.\nuser: Hi there\nassistant: \nassistant:"

    @pytest.mark.parametrize(
        "messages",
        [
            [],
            "hi",
            [{"content": "no role"}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            [{"role": "user", "content": 3}],
        ],
    )
    def test_what_cannot_be_a_prompt_is_a_400(self, messages: Any) -> None:
        with pytest.raises(BadRequest):
            chat_prompt(messages)


class TestAsk:
    """OpenAI sampling fields become Triton parameters; what Triton cannot do is a 400."""

    def test_parameters(self) -> None:
        a = ask(
            model="m",
            messages=CHAT["messages"],
            max_tokens=9,
            max_completion_tokens=7,
            temperature=0.2,
            top_p=0.9,
            stop=["\n"],
            stream=True,
            stream_options={"include_usage": True},
            tools=[],  # ignored, as backends ignore unknown keys
        )
        assert a.parameters == {
            "stream": True,
            "exclude_input_in_output": True,
            "max_tokens": 7,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "\n",
        }
        assert (a.path, a.include_usage) == ("/v2/models/m/generate_stream", True)
        assert json.loads(a.body())["text_input"] == "user: hi\nassistant:"

    def test_completions_prompt_and_quoted_model(self) -> None:
        a = ask(chat=False, model="llama3.1:8b", prompt=["once"], max_completion_tokens=5)
        assert a.prompt == "once"
        assert a.max_tokens is None  # max_completion_tokens is a chat field
        assert a.path == "/v2/models/llama3.1%3A8b/generate"
        assert not a.include_usage

    @pytest.mark.parametrize(
        "body",
        [
            {"messages": CHAT["messages"]},
            CHAT | {"n": 2},
            CHAT | {"stop": ["a", "b"]},
            CHAT | {"max_tokens": 0},
            CHAT | {"temperature": "hot"},
        ],
    )
    def test_refused(self, body: dict[str, Any]) -> None:
        with pytest.raises(BadRequest):
            ask(**body)

    def test_not_json(self) -> None:
        with pytest.raises(BadRequest):
            Ask.from_body(b"{", chat=True)


class TestTally:
    """Usage and finish reason: Triton's own outputs when it has them, else counted or estimated."""

    def test_estimates(self) -> None:
        a = ask(**CHAT)  # the prompt "user: hi\nassistant:" has 19 characters
        tally = Tally()
        assert tally.note({"text_output": "Hello world, again"}) == "Hello world, again"
        assert tally.settle(a, streamed=False) == (
            {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            "length",  # 18 characters would be 5 tokens: capped at max_tokens, so it got there
        )
        assert tally.settle(a, streamed=True)[0]["completion_tokens"] == 1  # one piece

    def test_triton_outputs_win(self) -> None:
        tally = Tally()
        tally.note({"text_output": "a", "num_input_tokens": [11], "num_output_tokens": 1})
        tally.note({"text_output": "b", "num_output_tokens": [1], "finish_reason": ["stop"]})
        usage, finish = tally.settle(ask(**CHAT), streamed=True)
        assert usage == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
        assert finish == "stop"

    def test_no_text_output_is_a_bad_answer(self) -> None:
        with pytest.raises(BackendBadAnswer):
            Tally().note({"outputs": []})


class TestRefusal:
    """Triton's error bodies keep their status and message in the OpenAI envelope."""

    @pytest.mark.parametrize(
        ("status", "raw", "code", "message"),
        [
            (404, b'{"error":"Request for unknown model"}', "model_not_found", "Request for"),
            (503, b'{"error":"Exceeds maximum queue size"}', "backend_unavailable", "Exceeds"),
            (400, b"plain words", "bad_request", "plain words"),
            (500, b"", "backend_error", "Triton answered 500"),
        ],
    )
    def test_mapped(self, status: int, raw: bytes, code: str, message: str) -> None:
        error = refusal(status, raw)
        assert isinstance(error, BackendRefused)
        assert (error.status, error.code) == (status, code)
        assert error.type == ("invalid_request_error" if status < 500 else "api_error")
        assert error.message.startswith(message)


class TestTritonChatCompletions:
    """On a Triton node the agent answers OpenAI chat through the generate extension."""

    async def test_whole_answer(self, triton: TritonServers) -> None:
        headers = {"X-Octopus-Tenant-Id": "t-1", "X-Octopus-Correlation-Id": "c-1"}
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status == 200
            body = await r.json()
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert agent.stats.output_tokens == 3
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-")
        assert body["model"] == "llama3"
        assert body["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ]
        assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        path, seen, raw = triton.fake.ctl.requests[-1]
        assert path == "/v2/models/llama3/generate"
        assert (seen["X-Tenant-Id"], seen["X-Correlation-Id"]) == ("t-1", "c-1")
        assert json.loads(raw) == {
            "text_input": "user: hi\nassistant:",
            "parameters": {"stream": False, "exclude_input_in_output": True, "max_tokens": 3},
        }

    async def test_stream_chunk_by_chunk(self, triton: TritonServers) -> None:
        ctl = triton.fake.ctl
        ctl.gate = asyncio.Event()
        body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/v1/chat/completions", json=body) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                async with asyncio.timeout(5):
                    role = json.loads((await r.content.readuntil(b"\n\n"))[6:])
                    first = json.loads((await r.content.readuntil(b"\n\n"))[6:])
                assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                assert first["choices"][0]["delta"] == {"content": "Hel"}
                assert not ctl.last_sent.is_set()
                assert agent.stats.in_flight == 1
                ctl.gate.set()
                rest = events(await r.read())
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert agent.stats.output_tokens == 3
        deltas = [e["choices"][0]["delta"] for e in rest[:2]]
        assert deltas == [{"content": "lo"}, {"content": " world"}]
        finish, usage, done = rest[2:]
        assert finish["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "length",
        }
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        assert done == "[DONE]"
        assert {e["id"] for e in [role, first, *rest[:3]]} == {role["id"]}
        assert all(e["object"] == "chat.completion.chunk" for e in [role, first, finish, usage])
        assert first["usage"] is None  # include_usage: every other chunk carries null
        assert ctl.requests[-1][0] == "/v2/models/llama3/generate_stream"

    async def test_client_gone_stops_triton(self, triton: TritonServers) -> None:
        ctl = triton.fake.ctl
        ctl.gate = asyncio.Event()  # never set
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": True})
            async with asyncio.timeout(5):
                await r.content.readuntil(b"\n\n")
            assert agent.stats.in_flight == 1
            r.close()
            async with asyncio.timeout(5):
                await ctl.cancelled.wait()
            await wait_until(lambda: agent.stats.in_flight == 0)

    @pytest.mark.parametrize(
        ("refuse", "status", "code"),
        [
            ((400, "max_tokens must be a positive integer"), 400, "bad_request"),
            ((503, "Exceeds maximum queue size"), 503, "backend_unavailable"),
        ],
    )
    @pytest.mark.parametrize("stream", [False, True])
    async def test_triton_errors_in_the_envelope(
        self,
        triton: TritonServers,
        refuse: tuple[int, str],
        status: int,
        code: str,
        stream: bool,
    ) -> None:
        triton.fake.ctl.refuse = refuse
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(
                f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": stream}
            )
            assert r.status == status
            error = (await r.json())["error"]
            await wait_until(lambda: agent.stats.in_flight == 0)
        assert error["message"] == refuse[1]
        assert error["code"] == code

    async def test_unknown_model_is_a_404(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT | {"model": "nope"})
            assert r.status == 404
            error = (await r.json())["error"]
        assert error["code"] == "model_not_found"
        assert error["type"] == "invalid_request_error"
        assert "unknown model" in error["message"]

    async def test_error_event_mid_stream(self, triton: TritonServers) -> None:
        triton.fake.ctl.error_at = 1
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(
                f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": True}
            ) as r:
                assert r.status == 200
                sent = events(await r.read())
            await wait_until(lambda: agent.stats.in_flight == 0)
        assert sent[1]["choices"][0]["delta"] == {"content": "Hel"}
        assert sent[-1] == {
            "error": {
                "message": "CUDA out of memory",
                "type": "api_error",
                "param": None,
                "code": "backend_error",
            }
        }

    async def test_error_as_first_event_is_a_plain_error(self, triton: TritonServers) -> None:
        triton.fake.ctl.error_at = 0
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": True})
            assert r.status == 500
            assert (await r.json())["error"]["message"] == "CUDA out of memory"

    async def test_dropped_stream_ends_with_the_cut_event(self, triton: TritonServers) -> None:
        """A Triton stream dropped midway ends with the error event that tells the router of a
        cut (its code), so the router ends it properly or resumes it."""
        triton.fake.ctl.drop_mid_stream = True
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(
                f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": True}
            ) as r:
                sent = events(await r.read())
            await wait_until(lambda: agent.stats.in_flight == 0)
        assert sent[1]["choices"][0]["delta"] == {"content": "Hel"}
        assert sent[-1]["error"]["code"] == STREAM_CUT_CODE
        assert "[DONE]" not in sent

    async def test_stalled_stream_ends_with_the_cut_event(self, triton: TritonServers) -> None:
        triton.fake.ctl.gate = asyncio.Event()  # never set: Triton stalls after its first piece
        settings = agent_settings(triton.url, idle_timeout_s=0.3)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            async with client.post(
                f"{agent.url}/v1/chat/completions", json=CHAT | {"stream": True}
            ) as r:
                sent = events(await r.read())
            await wait_until(lambda: agent.stats.in_flight == 0)
            async with asyncio.timeout(5):
                await triton.fake.ctl.cancelled.wait()  # the stalled generation was stopped
        assert sent[-1]["error"]["code"] == STREAM_CUT_CODE

    async def test_bad_request_never_reaches_triton(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT | {"n": 3})
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert triton.fake.ctl.requests == []


class TestTritonOtherRoutes:
    """Completions, the model list, /infer and embeddings on a Triton node."""

    async def test_completions(self, triton: TritonServers) -> None:
        body = {"model": "llama3", "prompt": "Once", "stream": True}
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/completions", json=body | {"stream": False})
            whole = await r.json()
            async with client.post(f"{agent.url}/v1/completions", json=body) as r:
                sent = events(await r.read())
        assert whole["object"] == "text_completion"
        assert whole["choices"][0]["text"] == "Hello world"
        assert whole["choices"][0]["finish_reason"] == "stop"
        assert [e["choices"][0]["text"] for e in sent[:-1]] == ["Hel", "lo", " world", ""]
        assert sent[-2]["choices"][0]["finish_reason"] == "stop"
        assert sent[-1] == "[DONE]"
        assert json.loads(triton.fake.ctl.requests[-1][2])["text_input"] == "Once"

    async def test_models_lists_ready_ones(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            body = await (await client.get(f"{agent.url}/v1/models")).json()
        assert body["object"] == "list"
        assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
            ("llama3", "model", "Triton Inference Server")
        ]

    async def test_infer_with_a_chat_body(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json=CHAT)
            body = await r.json()
        assert body["choices"][0]["message"]["content"] == "Hello world"
        assert triton.fake.ctl.requests[-1][0] == "/v2/models/llama3/generate"

    async def test_embeddings_are_not_served(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/embeddings", json={"model": "llama3"})
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"

    async def test_other_kinds_are_relayed(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT)
            assert (await r.json())["usage"]["completion_tokens"] == 7
        assert fake.state.requests[-1][0] == "/v1/chat/completions"
