from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from node_agent.app import serve

from .conftest import FakeBackend, TritonServers, agent_settings, wait_until
from .fake_streams import StreamControls
from .fakes import TGI_MODEL, FakeTgi

OLLAMA_CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}


class TestOllamaNative:
    """Ollama's own API is relayed: NDJSON chunk by chunk, lists and version as they are."""

    @pytest.mark.parametrize(("path", "field"), [("/api/chat", "message"), ("/api/generate", "")])
    async def test_stream_chunk_by_chunk(
        self, ollama: tuple[FakeBackend, str], path: str, field: str
    ) -> None:
        fake, url = ollama
        fake.state.gate = asyncio.Event()
        body = OLLAMA_CHAT if field else {"model": "llama3.1:8b", "prompt": "hi"}
        headers = {"X-Octopus-Tenant-Id": "t-1", "X-Octopus-Correlation-Id": "c-1"}
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}{path}", json=body, headers=headers) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("application/x-ndjson")
                async with asyncio.timeout(5):
                    first = json.loads(await r.content.readline())
                assert first["done"] is False
                assert not fake.state.last_sent.is_set()
                assert agent.stats.in_flight == 1
                fake.state.gate.set()
                lines = [json.loads(line) for line in (await r.read()).splitlines()]
            assert lines[-1]["done"] is True
            assert lines[-1]["eval_count"] == 7
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert agent.stats.output_tokens == 7  # the exact eval_count, not the pieces
        _, seen, _ = fake.state.requests[-1]
        assert (seen["X-Tenant-Id"], seen["X-Correlation-Id"]) == ("t-1", "c-1")

    async def test_lists_version_embed_and_errors(self, ollama: tuple[FakeBackend, str]) -> None:
        _, url = ollama
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.get(f"{agent.url}/api/tags")
            assert [m["name"] for m in (await r.json())["models"]] == [
                "llama3.1:8b",
                "mistral:latest",
            ]
            r = await client.get(f"{agent.url}/api/ps")
            assert (await r.json())["models"][0]["size_vram"] == 6654289920
            r = await client.get(f"{agent.url}/api/version")
            assert await r.json() == {"version": "0.6.2"}
            r = await client.post(
                f"{agent.url}/api/embed", json={"model": "llama3.1:8b", "input": "x"}
            )
            assert (await r.json())["embeddings"] == [[0.1, 0.2, 0.3]]
            r = await client.post(f"{agent.url}/api/chat", json=OLLAMA_CHAT | {"model": "nope"})
            assert (r.status, await r.json()) == (404, {"error": "model 'nope' not found"})
            r = await client.post(f"{agent.url}/api/chat", json=OLLAMA_CHAT | {"stream": False})
            assert (await r.json())["message"]["content"] == "Hello world"

    async def test_cut_stream_ends_with_an_ndjson_error(
        self, ollama: tuple[FakeBackend, str]
    ) -> None:
        fake, url = ollama
        fake.state.drop_mid_stream = True
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/api/chat", json=OLLAMA_CHAT) as r:
                lines = (await r.read()).splitlines()
            assert json.loads(lines[0])["done"] is False
            assert json.loads(lines[-1])["error"].startswith("backend dropped")
            await wait_until(lambda: agent.stats.in_flight == 0)


class TestNativeCutStreams:
    """A native SSE stream cut by the backend ends with an error event in the native shape."""

    async def test_tgi_stream_cut(self, tgi: tuple[FakeTgi, str]) -> None:
        fake, url = tgi
        fake.ctl.drop_mid_stream = True
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/generate_stream", json={"inputs": "x"}) as r:
                events = [e for e in (await r.read()).split(b"\n\n") if e]
            assert json.loads(events[0].removeprefix(b"data:"))["index"] == 1
            last = json.loads(events[-1].removeprefix(b"data: "))
            assert last["error_type"] == "backend_stream_cut"
            assert last["error"].startswith("backend dropped")
            await wait_until(lambda: agent.stats.in_flight == 0)


class TestTgiNative:
    """TGI's /generate_stream is relayed event by event; /generate and /info as they are."""

    async def test_generate_stream(self, tgi: tuple[FakeTgi, str]) -> None:
        fake, url = tgi
        fake.ctl.gate = asyncio.Event()
        body = {"inputs": "hi", "parameters": {"max_new_tokens": 3, "details": True}}
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with client.post(f"{agent.url}/generate_stream", json=body) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                async with asyncio.timeout(5):
                    first = await r.content.readuntil(b"\n\n")
                assert json.loads(first.removeprefix(b"data:"))["token"]["text"] == "Hel"
                assert agent.stats.in_flight == 1
                assert not fake.ctl.last_sent.is_set()
                fake.ctl.gate.set()
                rest = await r.read()
            events = [json.loads(e.removeprefix(b"data:")) for e in rest.split(b"\n\n") if e]
            assert events[-1]["generated_text"] == "Hello world"
            assert b"[DONE]" not in rest
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert agent.stats.output_tokens == 3

    async def test_generate_and_info(self, tgi: tuple[FakeTgi, str]) -> None:
        _, url = tgi
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/generate", json={"inputs": "hi"})
            assert await r.json() == {"generated_text": "Hello world"}
            assert r.headers["x-generated-tokens"] == "3"
            assert agent.stats.output_tokens == 3
            r = await client.get(f"{agent.url}/info")
            assert (await r.json())["model_id"] == TGI_MODEL


class TestTritonNative:
    """Triton's generate_stream, infer, health and model routes are relayed, versions too."""

    async def test_generate_stream_and_cancel(self, triton: TritonServers) -> None:
        ctl: StreamControls = triton.fake.ctl
        ctl.gate = asyncio.Event()  # never set: the client leaves mid-stream
        settings = agent_settings(triton.url, backend_metrics_url=triton.metrics_url)
        body = {"text_input": "hi", "parameters": {"stream": True}}
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/v2/models/llama3/generate_stream", json=body)
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            async with asyncio.timeout(5):
                first = await r.content.readuntil(b"\n\n")
            assert json.loads(first.removeprefix(b"data: "))["text_output"] == "Hel"
            assert agent.stats.in_flight == 1
            r.close()
            async with asyncio.timeout(5):
                await ctl.cancelled.wait()
            await wait_until(lambda: agent.stats.in_flight == 0)

    async def test_versioned_generate_stream_to_the_end(self, triton: TritonServers) -> None:
        url = triton.url
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            path = "/v2/models/llama3/versions/1/generate_stream"
            async with client.post(f"{agent.url}{path}", json={"text_input": "hi"}) as r:
                raw = await r.read()
            texts = [json.loads(e[6:])["text_output"] for e in raw.split(b"\n\n") if e]
            assert texts == ["Hel", "lo", " world"]
            assert triton.fake.ctl.requests[-1][0] == path

    async def test_unary_and_status_routes(self, triton: TritonServers) -> None:
        url = triton.url
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            infer = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES"}]}
            binary = {"Inference-Header-Content-Length": str(len(json.dumps(infer)))}
            r = await client.post(f"{agent.url}/v2/models/llama3/infer", json=infer, headers=binary)
            assert (await r.json())["outputs"][0]["data"] == ["Hello world"]
            assert "Inference-Header-Content-Length" in r.headers
            _, seen, _ = triton.fake.ctl.requests[-1]
            assert seen["Inference-Header-Content-Length"] == str(len(json.dumps(infer)))
            r = await client.post(
                f"{agent.url}/v2/models/llama3/generate", json={"text_input": "x"}
            )
            assert (await r.json())["text_output"] == "Hello world"
            assert (await client.get(f"{agent.url}/v2/health/live")).status == 200
            assert (await client.get(f"{agent.url}/v2/health/ready")).status == 200
            assert (await client.get(f"{agent.url}/v2/models/llama3/ready")).status == 200
            r = await client.get(f"{agent.url}/v2/models/mistral/versions/1/ready")
            assert (r.status, await r.json()) == (400, {"error": "Model version not ready"})
            r = await client.get(f"{agent.url}/v2/models/llama3")
            assert (await r.json())["platform"] == "vllm"
            r = await client.post(f"{agent.url}/v2/models/nope/generate", json={"text_input": "x"})
            assert r.status == 404
            assert (await r.json())["error"].startswith("Request for unknown model")


class TestNativeRoutesOnlyForTheirKind:
    """A native route of another backend kind is a 404 in the OpenAI envelope."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/api/chat"),
            ("GET", "/api/tags"),
            ("POST", "/generate_stream"),
            ("GET", "/info"),
            ("POST", "/v2/models/m/generate_stream"),
            ("GET", "/v2/health/ready"),
        ],
    )
    async def test_vllm_speaks_none(
        self, vllm: tuple[FakeBackend, str], method: str, path: str
    ) -> None:
        fake, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.request(method, f"{agent.url}{path}", json={"model": "m"})
            assert r.status == 404
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "not_found"
            assert "vllm" in err["message"]
            assert agent.stats.requests_total == 0
        assert fake.state.requests == []

    async def test_ollama_does_not_speak_tgi_or_triton(
        self, ollama: tuple[FakeBackend, str]
    ) -> None:
        _, url = ollama
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/generate", json={"inputs": "x"})
            assert r.status == 404
            r = await client.get(f"{agent.url}/v2/models/llama3.1:8b/ready")
            assert r.status == 404

    async def test_configured_kind_decides(self, tgi: tuple[FakeTgi, str]) -> None:
        _, url = tgi
        settings = agent_settings(url, backend_kind="tgi")
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            assert (await client.get(f"{agent.url}/info")).status == 200
            assert (await client.get(f"{agent.url}/api/version")).status == 404
