from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from node_agent.app import serve

from .conftest import FakeBackend, agent_settings, eventually, free_port, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = CHAT | {"stream": True}


class TestHeaders:
    """The backend sees the platform's renamed tenant and correlation headers."""

    async def test_renamed_and_session_passed(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        headers = {
            "X-Octopus-Tenant-Id": "tenant-7",
            "X-Octopus-Correlation-Id": "episode-xyz789",
            "X-Octopus-Session-Id": "sess-1",
        }
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status == 200
            assert (await r.json())["usage"]["completion_tokens"] == 7
        path, seen, body = fake.state.requests[-1]
        assert path == "/v1/chat/completions"
        assert seen["X-Tenant-Id"] == "tenant-7"
        assert seen["X-Correlation-Id"] == "episode-xyz789"
        assert seen["X-Octopus-Session-Id"] == "sess-1"
        assert "X-Octopus-Tenant-Id" not in seen
        assert json.loads(body) == CHAT

    async def test_missing_headers_sent_empty(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json=CHAT)
            assert r.status == 200
        _, seen, _ = fake.state.requests[-1]
        assert seen["X-Tenant-Id"] == ""
        assert seen["X-Correlation-Id"] == ""
        assert "X-Octopus-Session-Id" not in seen

    async def test_body_forwarded_byte_for_byte(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        raw = b'{"model": "m",   "messages": [],  "top_k": 5, "keep_alive": "10m"}'
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            hdrs = {"Content-Type": "application/json"}
            r = await client.post(f"{agent.url}/v1/completions", data=raw, headers=hdrs)
            assert r.status == 200
        assert fake.state.requests[-1][2] == raw


class TestStreaming:
    """Streams are relayed chunk by chunk as they arrive, as text/event-stream."""

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/infer"])
    async def test_first_chunk_before_last_is_sent(
        self, vllm: tuple[FakeBackend, str], path: str
    ) -> None:
        fake, url = vllm
        fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}{path}", json=STREAM) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                async with asyncio.timeout(5):
                    first = await r.content.readuntil(b"\n\n")
                assert b'"Hel"' in first
                assert not fake.state.last_sent.is_set()
                assert agent.stats.in_flight == 1
                fake.state.gate.set()
                rest = await r.read()
            assert rest.endswith(b"data: [DONE]\n\n")
            assert b'" world"' in rest
            await wait_until(lambda: agent.stats.in_flight == 0)

    async def test_token_count_from_usage(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            body = STREAM | {"stream_options": {"include_usage": True}}
            async with client.post(f"{agent.url}/v1/chat/completions", json=body) as r:
                await r.read()
            assert agent.stats.output_tokens == 10
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                await r.read()
            # no usage chunk: three non-empty content deltas counted
            assert agent.stats.output_tokens == 13

    async def test_backend_dies_mid_stream(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        fake.state.drop_mid_stream = True
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                assert r.status == 200
                body = await r.read()
            assert b'"Hel"' in body
            last = body.strip().split(b"\n\n")[-1]
            assert last.startswith(b"data: ")
            assert json.loads(last[6:])["error"]["code"] == "backend_stream_cut"
            await wait_until(lambda: agent.stats.in_flight == 0)


class TestInFlight:
    """The in-flight count is exact: up during a request, back to 0 after, even on disconnect."""

    async def test_client_disconnect_cancels_upstream(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=STREAM)
            async with asyncio.timeout(5):
                await r.content.readuntil(b"\n\n")
            assert agent.stats.in_flight == 1
            r.close()  # the client goes away mid-stream
            async with asyncio.timeout(5):
                await fake.state.cancelled.wait()
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert not fake.state.last_sent.is_set()

    async def test_status_reports_in_flight(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                await r.content.readuntil(b"\n\n")

                async def reported(n: int) -> bool:
                    async with client.get(f"{agent.url}/status") as s:
                        return int((await s.json())["inFlight"]) == n

                await eventually(lambda: reported(1))
                fake.state.gate.set()
                await r.read()
            await eventually(lambda: reported(0))


class TestErrors:
    """Errors reach the client in the OpenAI envelope; backend errors keep their status."""

    async def test_backend_unreachable_is_502(self) -> None:
        settings = agent_settings(f"http://127.0.0.1:{free_port()}", backend_kind="vllm")
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT)
            assert r.status == 502
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "backend_unreachable"
            assert agent.stats.in_flight == 0

    async def test_backend_error_passed_through(self, ollama: tuple[FakeBackend, str]) -> None:
        _, url = ollama
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(
                f"{agent.url}/v1/chat/completions", json=CHAT | {"model": "missing"}
            )
            assert r.status == 404
            assert await r.json() == {"error": "model 'missing' not found"}
            assert r.headers["X-Request-Id"] == "r1"

    async def test_body_too_large_and_unknown_route(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        settings = agent_settings(url, max_body_bytes=2048)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", data=b"x" * 4096)
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"
            r = await client.get(f"{agent.url}/nope")
            assert r.status == 404
            assert (await r.json())["error"]["type"] == "invalid_request_error"

    async def test_models_and_embeddings_proxied(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.get(f"{agent.url}/v1/models")
            assert (await r.json())["data"][0]["owned_by"] == "vllm"
            r = await client.post(f"{agent.url}/v1/embeddings", json={"model": "m", "input": "x"})
            assert (await r.json())["data"][0]["embedding"] == [0.1, 0.2]


class TestTimeouts:
    """A backend that never answers, or stalls mid-answer, is cut off in bounded time."""

    async def test_first_byte_timeout_is_504(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        settings = agent_settings(url, first_byte_timeout_s=0.2)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v1/chat/completions", json=CHAT | {"model": "slow"})
            assert r.status == 504
            assert (await r.json())["error"]["code"] == "backend_timeout"
            async with asyncio.timeout(5):
                await fake.state.cancelled.wait()
            assert agent.stats.in_flight == 0

    async def test_idle_timeout_mid_stream(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        fake.state.gate = asyncio.Event()  # never set: the backend stalls after one chunk
        settings = agent_settings(url, idle_timeout_s=0.2)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                body = await r.read()
            last = body.strip().split(b"\n\n")[-1]
            assert json.loads(last[6:])["error"]["message"].startswith("backend timed out")
            await wait_until(lambda: agent.stats.in_flight == 0)

    async def test_truncated_json_body_is_cut(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            body = CHAT | {"model": "truncate"}
            async with client.post(f"{agent.url}/v1/chat/completions", json=body) as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            await wait_until(lambda: agent.stats.in_flight == 0)
