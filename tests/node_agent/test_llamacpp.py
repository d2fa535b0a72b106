"""llama.cpp's server as its own kind: detected, and its slots, context and queue reported."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from node_agent.app import serve
from node_agent.backends.detect import detect_kind, make_backend
from node_agent.backends.llamacpp import LlamaCppBackend
from node_protocol.wire import LoadReport

from .conftest import agent_settings
from .fake_llamacpp import FakeLlamaCpp

Served = tuple[FakeLlamaCpp, str]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class TestDetection:
    async def test_server_header_names_llamacpp(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """Every answer of llama-server says ``Server: llama.cpp``: that alone is enough."""
        assert await detect_kind(session, llamacpp[1]) == "llamacpp"

    async def test_props_name_llamacpp_without_the_header(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """Behind a proxy that drops the header, ``/props`` with its slots still tells."""
        llamacpp[0].ctl.server_header = False
        assert await detect_kind(session, llamacpp[1]) == "llamacpp"


class TestFacts:
    async def test_slots_context_queue_and_cache_counters(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """The model under its alias, ``total_slots`` as its parallel requests, one slot's
        context, processing/deferred as running/waiting, the prompt-cache counters."""
        fake, url = llamacpp
        fake.ctl.processing, fake.ctl.deferred = 2, 3
        backend = make_backend("llamacpp", session, url)
        facts = await backend.collect()
        (model,) = facts.models
        assert (model.id, model.loaded, model.max_parallel) == ("tiny", True, 2)
        assert model.context_length == 4096
        assert model.size_bytes == 17456128
        assert (facts.queue_running, facts.queue_waiting) == (2, 3)
        assert (facts.prompt_tokens, facts.cached_prompt_tokens) == (35, 29)
        assert facts.version == "b1-0c1e570"

    async def test_configured_parallelism_wins(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """``--max-parallel`` overrides the slots the server reports."""
        backend = make_backend("llamacpp", session, llamacpp[1], max_parallel=5)
        assert (await backend.collect()).models[0].max_parallel == 5

    async def test_without_metrics_the_working_slots_are_read(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """Started without ``--metrics``: the running count comes from ``/slots``, the queue
        depth is unknown (None), not 0."""
        fake, url = llamacpp
        fake.ctl.metrics = False
        fake.ctl.processing = 1
        facts = await LlamaCppBackend(session, url).collect()
        assert facts.queue_running == 1
        assert facts.queue_waiting is None
        assert facts.prompt_tokens is None

    async def test_facts_are_read_over_one_connection(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """Each keep-alive connection holds one of llama-server's few HTTP threads (parallel + 2
        on a small machine) while it idles: the agent's reads go one after another over one
        connection, so they never crowd out the clients' requests."""
        fake, url = llamacpp
        backend = LlamaCppBackend(session, url)
        for _ in range(3):
            await backend.collect()
        assert len(fake.peers) == 1

    async def test_loading_model_is_not_healthy(
        self, llamacpp: Served, session: aiohttp.ClientSession
    ) -> None:
        """``/health`` answers 503 while the model loads: the node is not ok."""
        fake, url = llamacpp
        backend = LlamaCppBackend(session, url)
        fake.ctl.loading = True
        assert await backend.health() == "degraded"
        fake.ctl.loading = False
        assert await backend.health() == "ok"


class TestReport:
    async def test_report_carries_the_cache_counters_to_the_router(self, llamacpp: Served) -> None:
        """The agent's report names the kind and carries the prompt-cache counters, and the
        router's reading of it (``LoadReport.from_json``) keeps them."""
        async with serve(agent_settings(llamacpp[1])) as agent:
            report = await agent.reporter.current()
        assert report.backend_kind == "llamacpp"
        wire = report.to_json()
        assert (wire["promptTokens"], wire["cachedPromptTokens"]) == (35, 29)
        assert LoadReport.from_json(wire) == report
