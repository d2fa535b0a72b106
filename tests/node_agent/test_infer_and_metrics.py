from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from node_agent.app import serve

from .conftest import (
    FakeBackend,
    FakeRouter,
    TritonServers,
    agent_settings,
    free_port,
    wait_until,
)
from .fakes import TGI_MODEL, FakeTgi

STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


class TestInferPromptShape:
    """/infer with {prompt, maxTokens} answers {text, tokensUsed, model}."""

    async def test_chat_backend(self, vllm: tuple[FakeBackend, str]) -> None:
        fake, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json={"prompt": "Say hi"})
            assert r.status == 200
            assert await r.json() == {
                "text": "Hello world",
                "tokensUsed": 12,
                "model": "llama-3.1-8b",
            }
            assert agent.stats.output_tokens == 7
        path, _, raw = fake.state.requests[-1]
        assert path == "/v1/chat/completions"
        assert json.loads(raw) == {
            "model": "llama-3.1-8b",  # the node's first loaded model
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 512,
            "stream": False,
        }

    async def test_max_tokens_and_model_given(self, ollama: tuple[FakeBackend, str]) -> None:
        fake, url = ollama
        body = {"prompt": "x", "maxTokens": 64, "model": "mistral:latest"}
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json=body)
            assert (await r.json())["model"] == "mistral:latest"
        sent = json.loads(fake.state.requests[-1][2])
        assert (sent["model"], sent["max_tokens"]) == ("mistral:latest", 64)

    async def test_tgi_base_model_left_out(self, tgi: tuple[FakeTgi, str]) -> None:
        fake, url = tgi
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json={"prompt": "hi"})
            assert await r.json() == {"text": "Hello world", "tokensUsed": 7, "model": TGI_MODEL}
        sent = json.loads(fake.ctl.requests[-1][2])
        assert "model" not in sent  # any other value would be taken for a LoRA adapter id
        assert sent["max_tokens"] == 512

    async def test_triton_uses_generate(self, triton: TritonServers) -> None:
        async with serve(agent_settings(triton.url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json={"prompt": "hi", "maxTokens": 8})
            assert await r.json() == {"text": "Hello world", "tokensUsed": None, "model": "llama3"}
        path, _, raw = triton.fake.ctl.requests[-1]
        assert path == "/v2/models/llama3/generate"
        assert json.loads(raw) == {"text_input": "hi", "parameters": {"max_tokens": 8}}

    @pytest.mark.parametrize(
        "body", [{"prompt": ""}, {"prompt": "x", "maxTokens": 0}, {"prompt": "x", "maxTokens": "9"}]
    )
    async def test_bad_prompt_is_400(self, vllm: tuple[FakeBackend, str], body: object) -> None:
        fake, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json=body)
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert fake.state.requests == []

    async def test_backend_error_passed_on(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            r = await client.post(f"{agent.url}/infer", json={"prompt": "x", "model": "missing"})
            assert (r.status, await r.json()) == (404, {"error": "model 'missing' not found"})


class TestAgentMetrics:
    """/metrics is Prometheus text from the app's own registry, counting proxied requests."""

    async def test_counts_a_proxied_request(
        self, vllm: tuple[FakeBackend, str], router: tuple[FakeRouter, str]
    ) -> None:
        fake, url = vllm
        fake_router, router_url = router
        fake.state.gate = asyncio.Event()
        settings = agent_settings(url, router_urls=(router_url,))
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            await fake_router.wait_for(lambda: len(fake_router.reports) >= 1)
            async with client.post(f"{agent.url}/v1/chat/completions", json=STREAM) as r:
                await r.content.readuntil(b"\n\n")
                during = samples(await (await client.get(f"{agent.url}/metrics")).text())
                assert value(during, "node_agent_requests_in_flight") == 1
                fake.state.gate.set()
                await r.read()
            await wait_until(lambda: agent.stats.in_flight == 0)
            r = await client.get(f"{agent.url}/metrics")
            assert r.headers["Content-Type"].startswith("text/plain")
            after = samples(await r.text())
        path = "/v1/chat/completions"
        assert value(after, "node_agent_requests_total", path=path, status="200") == 1
        assert value(after, "node_agent_request_duration_seconds_count", path=path) == 1
        assert value(after, "node_agent_time_to_first_byte_seconds_count", path=path) == 1
        assert value(after, "node_agent_requests_in_flight") == 0
        assert value(after, "node_agent_output_tokens_total") == 3
        assert value(after, "node_agent_backend_health", state="ok", kind="vllm") == 1
        assert value(after, "node_agent_backend_health", state="unhealthy") == 0
        assert value(after, "node_agent_model_loaded", model="llama-3.1-8b") == 1
        assert value(after, "node_agent_models_loaded") == 2
        assert value(after, "node_agent_backend_queue_waiting") == 5
        assert value(after, "node_agent_report_send_failures_total", router=router_url) == 0

    async def test_routes_label_templates_and_errors(self, triton: TritonServers) -> None:
        settings = agent_settings(triton.url, backend_metrics_url=triton.metrics_url)
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            await agent.reporter.current()
            for model in ("llama3", "nope"):
                await client.post(
                    f"{agent.url}/v2/models/{model}/generate", json={"text_input": "x"}
                )
            found = samples(await (await client.get(f"{agent.url}/metrics")).text())
        route = "/v2/models/{model}/generate"
        assert value(found, "node_agent_requests_total", path=route, status="200") == 1
        assert value(found, "node_agent_requests_total", path=route, status="404") == 1
        assert value(found, "node_agent_gpu_memory_total_bytes", gpu="0") == 85899345920
        assert value(found, "node_agent_gpu_memory_used_bytes", gpu_name="GPU-bbbb") == 1073741824

    async def test_unreachable_backend_counted_as_502(self) -> None:
        settings = agent_settings(f"http://127.0.0.1:{free_port()}", backend_kind="vllm")
        async with serve(settings) as agent, aiohttp.ClientSession() as client:
            await client.post(f"{agent.url}/v1/completions", json={"model": "m", "prompt": "x"})
            found = samples(await (await client.get(f"{agent.url}/metrics")).text())
        assert value(found, "node_agent_requests_total", path="/v1/completions", status="502") == 1

    async def test_registry_is_per_app(self, vllm: tuple[FakeBackend, str]) -> None:
        _, url = vllm
        async with (
            serve(agent_settings(url, name="a")) as first,
            serve(agent_settings(url, name="b")) as second,
            aiohttp.ClientSession() as client,
        ):
            await client.get(f"{first.url}/v1/models")
            text = await (await client.get(f"{second.url}/metrics")).text()
        assert not [s for s in samples(text) if s.name == "node_agent_requests_total"]
