"""Conformance: every backend kind's emulator face, through the real agent, reported right.

For each kind (Ollama, vLLM, TGI, Triton, LM Studio) the real emulator face runs on a socket and
the real agent runs beside it with ``backend_kind="auto"`` (it has to detect the kind), emulated
GPUs and no router. The tests read the agent's ``GET /status`` (its load report) and talk OpenAI
to the agent with the ``openai`` package, as a router would send a client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.emulator.app import RunningEmulator
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import RunningAgent
from node_agent.app import serve as serve_agent
from node_agent.settings import AgentSettings

LLAMA = "llama3.1:8b"
MISTRAL = "mistral:7b"
HF_LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def emulated(kind: str, *models: str, preload: tuple[str, ...] | None = None) -> EmulatorConfig:
    """A fast box with one slot per model; a 7b (bench/capacity.toml) loads in 0.2 s."""
    return EmulatorConfig(
        kind=kind,
        models=models,
        preload=preload,
        tok_s=400.0,
        ttft_s=0.01,
        slots=1,
        load_time_scale=0.05,
    )


CONFIGS = {
    "ollama": emulated("ollama", LLAMA, MISTRAL, preload=()),
    "vllm": emulated("vllm", HF_LLAMA),
    "tgi": emulated("tgi", HF_LLAMA),
    "triton": emulated("triton", LLAMA, MISTRAL, preload=(LLAMA,)),
    "lmstudio": emulated("lmstudio", LLAMA, MISTRAL, preload=()),
}
KINDS = tuple(CONFIGS)
QUEUE_KINDS = ("vllm", "tgi", "triton")  # the kinds whose metrics give a queue depth
ON_DEMAND_KINDS = ("ollama", "lmstudio")  # the kinds that load a model for a request
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

Report = dict[str, Any]


@dataclass
class Node:
    """One emulated backend with the agent beside it."""

    kind: str
    emulator: RunningEmulator
    agent: RunningAgent
    session: aiohttp.ClientSession

    @property
    def model(self) -> str:
        """The model the tests talk to: the first one served."""
        return CONFIGS[self.kind].models[0]

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.agent.url}/v1", api_key="unused", max_retries=0)

    async def status(self) -> Report:
        async with self.session.get(f"{self.agent.url}/status") as resp:
            assert resp.status == 200
            report: Report = await resp.json()
            return report

    async def wait_status(self, cond: Callable[[Report], bool], within: float = 5.0) -> Report:
        """The first load report that meets the condition (reports are made every 50 ms)."""
        deadline = time.monotonic() + within
        while not cond(report := await self.status()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no report met the condition; the last: {report}")
            await asyncio.sleep(0.05)
        return report


@contextlib.asynccontextmanager
async def node(kind: str, gpu_source: str = "emulated") -> AsyncIterator[Node]:
    config = CONFIGS[kind]
    async with serve_emulator(config) as emulator:
        settings = AgentSettings(
            backend_url=emulator.url,
            backend_kind="auto",
            # Triton's metrics are on their own port; the others' are found beside the API.
            backend_metrics_url=emulator.metrics_url if kind == "triton" else None,
            router_urls=(),
            name=f"{kind}-box",
            host="127.0.0.1",
            port=0,
            gpu_source=gpu_source,
            report_interval_s=0.05,
            shutdown_timeout_s=2.0,
        )
        async with serve_agent(settings) as agent, aiohttp.ClientSession() as session:
            yield Node(kind, emulator, agent, session)


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition on an emulator's own state (it has no event to wait on)."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def loaded(report: Report) -> set[str]:
    return {m["id"] for m in report["models"] if m["loaded"]}


def gpu_used(report: Report) -> int:
    return sum(g["memoryUsedBytes"] for g in report["gpus"])


async def chat_once(node: Node, model: str) -> None:
    async with node.openai() as client:
        await client.chat.completions.create(model=model, messages=HI, max_tokens=2)


class TestDetection:
    """The agent detects each backend's kind by probing it, and lists every model it serves."""

    @pytest.mark.parametrize("kind", KINDS)
    async def test_kind_and_models(self, kind: str) -> None:
        async with node(kind) as n:
            report = await n.status()
        assert report["backendKind"] == kind
        assert report["backendHealth"] == "ok"
        assert report["backendVersion"] in (None, CONFIGS[kind].version)
        assert [m["id"] for m in report["models"]] == list(CONFIGS[kind].models)


class TestLoadedSet:
    """The loaded set follows each backend's way of loading: fixed, explicit or on demand."""

    @pytest.mark.parametrize("kind", ["vllm", "tgi"])
    async def test_single_model_servers_hold_their_model(self, kind: str) -> None:
        async with node(kind) as n:
            assert loaded(await n.status()) == {HF_LLAMA}

    async def test_triton_explicit_load_and_unload(self) -> None:
        async with node("triton") as n:
            assert loaded(await n.status()) == {LLAMA}  # MISTRAL is listed, never loaded
            repository = f"{n.emulator.url}/v2/repository/models/{MISTRAL}"
            async with n.session.post(f"{repository}/load") as resp:
                assert resp.status == 200
            await n.wait_status(lambda r: loaded(r) == {LLAMA, MISTRAL})
            async with n.session.post(f"{repository}/unload") as resp:
                assert resp.status == 200
            await n.wait_status(lambda r: loaded(r) == {LLAMA})

    @pytest.mark.parametrize("kind", ON_DEMAND_KINDS)
    async def test_a_request_loads_its_model(self, kind: str) -> None:
        async with node(kind) as n:
            assert loaded(await n.status()) == set()
            await chat_once(n, LLAMA)
            await n.wait_status(lambda r: loaded(r) == {LLAMA})


class TestVram:
    """GPU memory is in use once a model is loaded, and per model where the backend says it."""

    @pytest.mark.parametrize("kind", KINDS)
    async def test_gpu_memory_used_once_loaded(self, kind: str) -> None:
        async with node(kind) as n:
            if kind in ON_DEMAND_KINDS:
                assert gpu_used(await n.status()) == 0
                await chat_once(n, n.model)
            report = await n.wait_status(lambda r: bool(loaded(r)) and gpu_used(r) > 0)
        assert all(g["memoryUsedBytes"] <= g["memoryTotalBytes"] for g in report["gpus"])

    async def test_ollama_tells_each_model_vram(self) -> None:
        async with node("ollama") as n:
            await chat_once(n, LLAMA)
            report = await n.wait_status(lambda r: loaded(r) == {LLAMA})
        vram = {m["id"]: m["vramBytes"] for m in report["models"]}
        assert vram[LLAMA] > 0
        assert vram[MISTRAL] == 0

    async def test_triton_gpus_come_from_its_metrics_without_nvml(self) -> None:
        async with node("triton", gpu_source="none") as n:
            report = await n.wait_status(lambda r: gpu_used(r) > 0)
        assert report["gpus"][0]["memoryTotalBytes"] > report["gpus"][0]["memoryUsedBytes"]


class TestQueueDepth:
    """Requests beyond the slots show in flight, and as the queue where the backend has metrics."""

    @pytest.mark.parametrize("kind", KINDS)
    async def test_slow_requests_queue(self, kind: str) -> None:
        async with node(kind) as n:
            if kind in ON_DEMAND_KINDS:
                await chat_once(n, n.model)  # loaded first, so every request is a slow one
            body = {"model": n.model, "messages": HI, "max_tokens": 4000, "stream": True}

            async def slow() -> None:
                async with n.session.post(f"{n.agent.url}/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()

            requests = [asyncio.create_task(slow()) for _ in range(3)]
            try:
                report = await n.wait_status(lambda r: r["inFlight"] == 3)
                if kind in QUEUE_KINDS:
                    report = await n.wait_status(lambda r: (r["queueWaiting"] or 0) >= 2)
                else:
                    assert report["queueWaiting"] is None  # no metrics: unknown, not 0
                assert not any(task.done() for task in requests)
            finally:
                for task in requests:
                    task.cancel()  # the client leaves: the agent stops the backend
                await asyncio.gather(*requests, return_exceptions=True)
            await n.wait_status(lambda r: r["inFlight"] == 0)
            engine = n.emulator.engine
            await until(lambda: engine.cancelled >= 3)  # the backend stopped generating


class TestOpenAIChat:
    """An OpenAI client chats through the agent with every kind, Triton included."""

    @pytest.mark.parametrize("kind", KINDS)
    async def test_plain(self, kind: str) -> None:
        async with node(kind) as n, n.openai() as client:
            answer = await client.chat.completions.create(model=n.model, messages=HI, max_tokens=5)
            assert answer.object == "chat.completion"
            assert answer.choices[0].message.role == "assistant"
            assert answer.choices[0].message.content
            assert answer.choices[0].finish_reason == "length"
            assert answer.usage is not None
            assert answer.usage.completion_tokens == 5
            assert answer.usage.prompt_tokens > 0

    @pytest.mark.parametrize("kind", KINDS)
    async def test_streamed(self, kind: str) -> None:
        async with node(kind) as n, n.openai() as client:
            stream = await client.chat.completions.create(
                model=n.model,
                messages=HI,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        with_choices = [c for c in chunks if c.choices]
        assert with_choices[0].choices[0].delta.role == "assistant"
        pieces = [c.choices[0].delta.content for c in with_choices if c.choices[0].delta.content]
        assert len(pieces) == 6
        assert with_choices[-1].choices[0].finish_reason == "length"
        assert len({c.id for c in chunks}) == 1
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 6

    @pytest.mark.parametrize("kind", KINDS)
    async def test_models_list(self, kind: str) -> None:
        async with node(kind) as n, n.openai() as client:
            if kind in ON_DEMAND_KINDS:
                await chat_once(n, n.model)
            ids = [m.id async for m in client.models.list()]
        assert n.model in ids

    async def test_triton_unknown_model_is_a_404(self) -> None:
        async with node("triton") as n, n.openai() as client:
            with pytest.raises(openai.NotFoundError, match="unknown model"):
                await client.chat.completions.create(model=MISTRAL, messages=HI)
            ids = [m.id async for m in client.models.list()]
        assert ids == [LLAMA]  # the READY models only
