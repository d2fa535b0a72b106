from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from node_agent.app import serve
from node_agent.backends.detect import BackendUnreachableError, detect_kind, make_backend
from node_agent.backends.vllm import EngineStats
from node_protocol.wire import LoadReport

from .conftest import FakeBackend, ServerFactory, agent_settings, base_url, free_port


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class TestHealth:
    """GET /health follows the seed: 200 ok, 503 degraded on non-2xx, 503 unhealthy if down."""

    @pytest.mark.parametrize("kind", ["vllm", "ollama", "openai"])
    async def test_ok_then_degraded(
        self, kind: str, aiohttp_server: ServerFactory, session: aiohttp.ClientSession
    ) -> None:
        fake = FakeBackend(kind)
        url = base_url(await aiohttp_server(fake.app))
        async with serve(agent_settings(url, backend_kind=kind)) as agent:
            r = await session.get(f"{agent.url}/health")
            assert (r.status, await r.json()) == (200, {"status": "ok"})
            fake.state.health_status = 503
            r = await session.get(f"{agent.url}/health")
            assert (r.status, await r.json()) == (503, {"status": "degraded"})

    async def test_unhealthy_when_unreachable(self, session: aiohttp.ClientSession) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        for kind in ("auto", "vllm"):
            async with serve(agent_settings(dead, backend_kind=kind)) as agent:
                r = await session.get(f"{agent.url}/health")
                assert (r.status, await r.json()) == (503, {"status": "unhealthy"})


class TestVllmAdapter:
    """The vLLM adapter reads models from /v1/models and queue/KV gauges from /metrics."""

    async def test_collect(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = vllm
        facts = await make_backend("vllm", session, url).collect()
        assert facts.version == "0.9.1"
        assert (facts.queue_waiting, facts.queue_running) == (5, 3)
        assert facts.kv_cache_usage == pytest.approx(0.42)
        base, lora = facts.models
        assert base.id == "llama-3.1-8b"
        assert base.aliases == ("meta-llama/Llama-3.1-8B-Instruct",)
        assert base.loaded
        assert base.context_length == 8192
        assert (lora.id, lora.loaded, lora.context_length) == ("sql-lora", True, 8192)

    async def test_no_metrics_means_unknown(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = vllm
        fake.state.serve_metrics = False
        facts = await make_backend("vllm", session, url).collect()
        assert (facts.queue_waiting, facts.queue_running, facts.kv_cache_usage) == (None,) * 3
        assert len(facts.models) == 2

    def test_old_kv_metric_and_engines(self) -> None:
        text = (
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            'vllm:gpu_cache_usage_perc{engine="0"} 0.2\n'
            'vllm:gpu_cache_usage_perc{engine="1"} 0.4\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{engine="0"} 1\n'
            'vllm:num_requests_waiting{engine="1"} 2\n'
        )
        stats = EngineStats.from_scrape(text)
        assert stats.kv_cache_usage == pytest.approx(0.3)
        assert stats.waiting == 3
        assert stats.running is None

    def test_kv_capacity_from_cache_config_info(self) -> None:
        """The KV cache's tokens: each engine's num_gpu_blocks times block_size, summed."""
        info = (
            "# TYPE vllm:cache_config_info gauge\n"
            'vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="%s",'
            'gpu_memory_utilization="0.9",num_gpu_blocks="%d",num_cpu_blocks="None"} 1.0\n'
        )
        both = EngineStats.from_scrape(info % ("0", 2048) + info.split("\n", 1)[1] % ("1", 1024))
        assert both.kv_capacity_tokens == (2048 + 1024) * 16
        assert EngineStats.from_scrape("").kv_capacity_tokens is None
        unknown = info.replace('num_gpu_blocks="%d"', 'num_gpu_blocks="None%d"') % ("0", 1)
        assert EngineStats.from_scrape(unknown).kv_capacity_tokens is None


class TestOllamaAdapter:
    """The Ollama adapter lists /api/tags as available and /api/ps as loaded, with VRAM."""

    async def test_collect(
        self, ollama: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = ollama
        facts = await make_backend("ollama", session, url, max_parallel=4).collect()
        assert facts.version == "0.6.2"
        assert (facts.queue_waiting, facts.queue_running, facts.kv_cache_usage) == (None,) * 3
        by_id = {m.id: m for m in facts.models}
        llama, mistral = by_id["llama3.1:8b"], by_id["mistral:latest"]
        assert llama.loaded
        assert llama.vram_bytes == 6654289920
        assert llama.context_length == 8192
        assert llama.max_parallel == 4
        assert not mistral.loaded
        assert mistral.vram_bytes == 0
        assert mistral.size_bytes == 4113301824
        assert mistral.aliases == ("mistral",)

    async def test_loaded_only_in_ps(
        self, ollama: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = ollama
        fake.state.ollama_tags = []
        facts = await make_backend("ollama", session, url).collect()
        assert [(m.id, m.loaded) for m in facts.models] == [("llama3.1:8b", True)]


class TestGenericAdapter:
    """A generic OpenAI backend reports what /v1/models lists, as loaded."""

    async def test_collect(
        self, generic: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = generic
        facts = await make_backend("openai", session, url).collect()
        (model,) = facts.models
        assert model.id == "qwen2.5-7b-instruct-q4_k_m.gguf"
        assert model.loaded
        assert model.size_bytes == 4683074240
        assert facts.version is None
        assert facts.queue_waiting is None


class TestDetection:
    """backend_kind=auto recognises each backend by its own API."""

    async def test_each_kind(
        self,
        vllm: tuple[FakeBackend, str],
        ollama: tuple[FakeBackend, str],
        generic: tuple[FakeBackend, str],
        session: aiohttp.ClientSession,
    ) -> None:
        assert await detect_kind(session, vllm[1]) == "vllm"
        assert await detect_kind(session, ollama[1]) == "ollama"
        assert await detect_kind(session, generic[1]) == "openai"

    async def test_vllm_by_model_cards(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = vllm
        fake.state.serve_metrics = False
        assert await detect_kind(session, url) == "vllm"

    async def test_unreachable(self, session: aiohttp.ClientSession) -> None:
        with pytest.raises(BackendUnreachableError):
            await detect_kind(session, f"http://127.0.0.1:{free_port()}")


class TestStatus:
    """GET /status is the agent's current load report, filled by the detected adapter."""

    async def test_ollama_report(
        self, ollama: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = ollama
        async with serve(agent_settings(url)) as agent:
            r = await session.get(f"{agent.url}/status")
            report = LoadReport.from_json(await r.json())
        assert report.backend_kind == "ollama"
        assert report.backend_health == "ok"
        assert report.backend_version == "0.6.2"
        assert report.in_flight == 0
        assert report.seq >= 1
        assert {m.id for m in report.models if m.loaded} == {"llama3.1:8b"}
        assert report.queue_waiting is None
        assert report.gpus == ()

    async def test_vllm_report(
        self, vllm: tuple[FakeBackend, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = vllm
        async with serve(agent_settings(url)) as agent:
            r = await session.get(f"{agent.url}/status")
            report = LoadReport.from_json(await r.json())
        assert report.backend_kind == "vllm"
        assert (report.queue_waiting, report.queue_running) == (5, 3)
        assert report.kv_cache_usage == pytest.approx(0.42)
