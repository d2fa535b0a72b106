from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from node_agent.app import serve
from node_agent.backends.detect import detect_kind, make_backend
from node_agent.backends.prometheus_text import parse_gauges
from node_agent.backends.triton import TritonStats, default_metrics_url
from node_protocol.wire import BACKEND_KINDS, LoadReport

from .conftest import FakeBackend, TritonServers, agent_settings, free_port
from .fake_llamacpp import FakeLlamaCpp
from .fakes import LMS_LLAMA, LMS_QWEN, TGI_MODEL, FakeLmStudio, FakeTgi


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class TestDetectionOfAllKinds:
    """backend_kind=auto tells all seven kinds apart by what each backend answers."""

    async def test_each_kind(
        self,
        vllm: tuple[FakeBackend, str],
        ollama: tuple[FakeBackend, str],
        generic: tuple[FakeBackend, str],
        tgi: tuple[FakeTgi, str],
        triton: TritonServers,
        lmstudio: tuple[FakeLmStudio, str],
        llamacpp: tuple[FakeLlamaCpp, str],
        session: aiohttp.ClientSession,
    ) -> None:
        found = {
            "llamacpp": await detect_kind(session, llamacpp[1]),
            "ollama": await detect_kind(session, ollama[1]),
            "vllm": await detect_kind(session, vllm[1]),
            "tgi": await detect_kind(session, tgi[1]),
            "triton": await detect_kind(session, triton.url),
            "lmstudio": await detect_kind(session, lmstudio[1]),
            "openai": await detect_kind(session, generic[1]),
        }
        assert found == {kind: kind for kind in BACKEND_KINDS}

    async def test_triton_not_ready_is_still_triton(
        self, triton: TritonServers, session: aiohttp.ClientSession
    ) -> None:
        triton.fake.ctl.ready = False  # /v2/health/ready answers 400
        assert await detect_kind(session, triton.url) == "triton"

    async def test_older_lmstudio_by_v0_state(
        self, lmstudio: tuple[FakeLmStudio, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = lmstudio
        fake.ctl.api_v1 = False  # /api/v1/models is an unknown path: 200 with an error body
        assert await detect_kind(session, url) == "lmstudio"

    async def test_report_kind_is_a_wire_kind(self, tgi: tuple[FakeTgi, str]) -> None:
        _, url = tgi
        async with serve(agent_settings(url)) as agent:
            report = await agent.reporter.current()
        assert report.backend_kind == "tgi"
        assert LoadReport.from_json(report.to_json()) == report


class TestTgiAdapter:
    """TGI: one loaded model from /info, queue, batch and KV budget from /metrics."""

    async def test_collect(self, tgi: tuple[FakeTgi, str], session: aiohttp.ClientSession) -> None:
        _, url = tgi
        facts = await make_backend("tgi", session, url).collect()
        (model,) = facts.models
        assert (model.id, model.loaded) == (TGI_MODEL, True)
        assert model.max_parallel == 128  # max_concurrent_requests
        assert model.context_length == 4096  # max_total_tokens
        assert facts.version == "3.3.6"
        assert (facts.queue_waiting, facts.queue_running) == (4, 6)
        assert facts.kv_cache_usage == pytest.approx(4096 / 16384)
        assert facts.gpus == ()

    async def test_configured_parallel_wins(
        self, tgi: tuple[FakeTgi, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = tgi
        facts = await make_backend("tgi", session, url, max_parallel=8).collect()
        assert facts.models[0].max_parallel == 8


class TestTritonAdapter:
    """Triton: READY index entries are loaded; queue and GPUs come from the metrics port."""

    async def test_collect(self, triton: TritonServers, session: aiohttp.ClientSession) -> None:
        backend = make_backend("triton", session, triton.url, metrics_url=triton.metrics_url)
        facts = await backend.collect()
        assert [(m.id, m.loaded) for m in facts.models] == [
            ("ensemble", False),  # on disk, never loaded: name only
            ("llama3", True),
            ("mistral", False),
        ]
        assert all(m.context_length is None for m in facts.models)
        assert facts.version == "2.59.0"
        assert facts.queue_waiting == 5  # pending summed over models
        assert facts.queue_running is None
        assert facts.kv_cache_usage is None
        first, second = facts.gpus
        assert (first.index, first.name) == (0, "GPU-aaaa")
        assert first.memory_total_bytes == 85899345920
        assert first.memory_used_bytes == 42949672960
        assert first.utilization_pct == pytest.approx(50.0)
        assert (second.index, second.memory_used_bytes) == (1, 1073741824)

    async def test_gpus_reach_the_report_without_nvml(self, triton: TritonServers) -> None:
        settings = agent_settings(triton.url, backend_metrics_url=triton.metrics_url)
        async with serve(settings) as agent:
            report = await agent.reporter.current()
        assert report.backend_kind == "triton"
        assert [g.name for g in report.gpus] == ["GPU-aaaa", "GPU-bbbb"]
        assert {m.id for m in report.models if m.loaded} == {"llama3"}

    def test_trt_llm_running_and_kv(self) -> None:
        text = (
            "# TYPE nv_trt_llm_request_metrics gauge\n"
            'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 7\n'
            'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64\n'
            "# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n"
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="m"} 300\n'
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="m"} 1200\n'
        )
        stats = TritonStats.from_scrape(text)
        assert stats.running == 7
        assert stats.kv_cache_usage == pytest.approx(0.25)
        assert stats.pending is None

    def test_default_metrics_url_is_port_8002(self) -> None:
        assert default_metrics_url("http://gpu-3:8000") == "http://gpu-3:8002/metrics"
        assert default_metrics_url("https://10.0.0.5") == "https://10.0.0.5:8002/metrics"


class TestLmStudioAdapter:
    """LM Studio: loaded_instances (or v0 state) say loaded; parallel and context from config."""

    async def test_collect_v1(
        self, lmstudio: tuple[FakeLmStudio, str], session: aiohttp.ClientSession
    ) -> None:
        _, url = lmstudio
        facts = await make_backend("lmstudio", session, url).collect()
        qwen, llama = facts.models
        assert (qwen.id, qwen.loaded) == (LMS_QWEN, True)
        assert qwen.max_parallel == 8  # two instances of parallel 4
        assert qwen.context_length == 8192  # the loaded context, not the maximum
        assert qwen.aliases == (f"{LMS_QWEN}:2",)
        assert qwen.size_bytes == 4683074240
        assert (llama.id, llama.loaded, llama.max_parallel) == (LMS_LLAMA, False, None)
        assert llama.context_length == 131072
        assert (facts.queue_waiting, facts.queue_running, facts.kv_cache_usage) == (None,) * 3

    async def test_collect_v0(
        self, lmstudio: tuple[FakeLmStudio, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = lmstudio
        fake.ctl.api_v1 = False
        facts = await make_backend("lmstudio", session, url, max_parallel=2).collect()
        assert [(m.id, m.loaded, m.context_length) for m in facts.models] == [
            (LMS_QWEN, True, 8192),
            (LMS_LLAMA, False, 131072),
        ]
        assert all(m.max_parallel == 2 for m in facts.models)


class TestHealthPerKind:
    """Each kind's own health answer maps onto ok / degraded / unhealthy."""

    async def test_tgi_healthcheck_503_is_unhealthy(
        self, tgi: tuple[FakeTgi, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = tgi
        backend = make_backend("tgi", session, url)
        assert await backend.health() == "ok"
        fake.ctl.health_status = 503
        assert await backend.health() == "unhealthy"
        fake.ctl.health_status = 500
        assert await backend.health() == "degraded"

    async def test_triton_ready_not_ready_exiting(
        self, triton: TritonServers, session: aiohttp.ClientSession
    ) -> None:
        backend = make_backend("triton", session, triton.url)
        assert await backend.health() == "ok"
        triton.fake.ctl.ready = False
        assert await backend.health() == "degraded"
        triton.fake.ctl.exiting = True
        assert await backend.health() == "unhealthy"

    async def test_lmstudio_by_model_list(
        self, lmstudio: tuple[FakeLmStudio, str], session: aiohttp.ClientSession
    ) -> None:
        fake, url = lmstudio
        backend = make_backend("lmstudio", session, url)
        assert await backend.health() == "ok"
        fake.ctl.health_status = 500
        assert await backend.health() == "degraded"
        gone = make_backend("lmstudio", session, f"http://127.0.0.1:{free_port()}")
        assert await gone.health() == "unhealthy"

    async def test_agent_health_endpoint_for_triton(
        self, triton: TritonServers, session: aiohttp.ClientSession
    ) -> None:
        async with serve(agent_settings(triton.url)) as agent:
            r = await session.get(f"{agent.url}/health")
            assert (r.status, await r.json()) == (200, {"status": "ok"})
            triton.fake.ctl.ready = False
            r = await session.get(f"{agent.url}/health")
            assert (r.status, await r.json()) == (503, {"status": "degraded"})


class TestPrometheusText:
    """The shared scrape parser reads only the wanted families, with their labels."""

    def test_filters_and_sums(self) -> None:
        text = (
            "# TYPE tgi_queue_size gauge\ntgi_queue_size 2\n"
            "# TYPE tgi_queue_size_other gauge\ntgi_queue_size_other 99\n"
            '# TYPE x gauge\nx{a="1"} 1\nx{a="2"} 2\n'
        )
        scrape = parse_gauges(text, ("tgi_queue_size", "x"))
        assert scrape.total("tgi_queue_size") == 2
        assert scrape.total("tgi_queue_size_other") is None
        assert scrape.where("x", "a", "2") == [2.0]
        assert scrape.total("missing") is None

    def test_malformed_scrape_gives_nothing(self) -> None:
        assert parse_gauges("tgi_queue_size not-a-number\n", ("tgi_queue_size",)).samples == {}
