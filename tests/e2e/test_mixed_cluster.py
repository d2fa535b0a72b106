"""One node of each backend kind behind one router: every surface reaches the right nodes, Ollama
cold starts are avoided, and backend garbage is contained."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import ollama
import openai
import orjson

from bench.emulator.app import RunningEmulator
from bench.emulator.app import serve as serve_emulator
from bench.emulator.config import EmulatorConfig
from node_agent.app import serve as serve_agent
from router.app import RunningRouter
from router.app import serve as serve_router
from tests.conftest import router_settings
from tests.e2e.conftest import GROUP, agent_settings

FAST = {"tok_s": 400.0, "ttft_s": 0.01}
MIXED = {
    "ollama-1": EmulatorConfig(kind="ollama", models=("llama3.1:8b",), **FAST),
    "vllm-1": EmulatorConfig(kind="vllm", models=("llama2:13b",), **FAST),
    "tgi-1": EmulatorConfig(kind="tgi", models=("meta-llama/Llama-3.1-8B-Instruct",), **FAST),
    "triton-1": EmulatorConfig(kind="triton", models=("mistral:7b",), **FAST),
    "lmstudio-1": EmulatorConfig(kind="lmstudio", models=("codellama:34b",), **FAST),
}


@dataclass
class Mixed:
    router: RunningRouter
    emulators: dict[str, RunningEmulator]

    @property
    def group_url(self) -> str:
        return f"{self.router.url}/{GROUP}"


async def _healthy(router_url: str, names: set[str]) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(15):
        while True:
            async with session.get(f"{router_url}/api/server-groups/{GROUP}/nodes") as resp:
                nodes = (await resp.json())["nodes"]
            if names <= {n["name"] for n in nodes if n["status"] == "healthy"}:
                return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _cluster(nodes: dict[str, EmulatorConfig]) -> AsyncIterator[Mixed]:
    async with contextlib.AsyncExitStack() as stack:
        router = await stack.enter_async_context(serve_router(router_settings()))
        emulators = {}
        for name, config in nodes.items():
            emu = await stack.enter_async_context(serve_emulator(config))
            emulators[name] = emu
            settings = agent_settings(
                name,
                emu.url,
                router.url,
                backend_metrics_url=emu.metrics_url if config.kind == "triton" else None,
            )
            await stack.enter_async_context(serve_agent(settings))
        await _healthy(router.url, set(nodes))
        yield Mixed(router=router, emulators=emulators)


HELLO = [{"role": "user", "content": "Hello"}]


class TestSurfaces:
    """OpenAI, Ollama and Triton clients each reach the models they can through one router."""

    async def test_openai_ollama_and_triton_clients(self) -> None:
        """The OpenAI SDK chats with every model (Triton's too, translated by its agent); the
        ollama package chats
        with the Ollama-backed model; a Triton generate_stream streams through the router."""
        async with _cluster(MIXED) as mixed:
            client = openai.AsyncOpenAI(base_url=f"{mixed.group_url}/v1", api_key="unused")
            try:
                listed = {m.id for m in (await client.models.list()).data}
                for model in ("llama3.1:8b", "llama2:13b", "meta-llama/Llama-3.1-8B-Instruct",
                              "codellama:34b", "mistral:7b"):  # fmt: skip
                    assert model in listed
                    reply = await client.chat.completions.create(
                        model=model,
                        messages=HELLO,
                        max_tokens=4,  # type: ignore[arg-type]
                    )
                    assert reply.choices[0].message.content, model
            finally:
                await client.close()

            async with ollama.AsyncClient(host=mixed.group_url) as ollama_client:
                pieces = []
                async for part in await ollama_client.chat(
                    model="llama3.1:8b", messages=HELLO, stream=True, options={"num_predict": 6}
                ):
                    pieces.append(part["message"]["content"])
                tags = await ollama_client.list()
            assert len(pieces) >= 6
            assert [m.model for m in tags.models] == ["llama3.1:8b"]

            url = f"{mixed.group_url}/v2/models/mistral:7b/generate_stream"
            body = {"text_input": "Hello", "parameters": {"max_tokens": 5, "stream": True}}
            async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
                assert resp.status == 200
                assert resp.headers["X-Inference-Node"] == "triton-1"
                events = [e for e in (await resp.read()).split(b"\n\n") if e.strip()]
            assert len(events) >= 5
            assert all(orjson.loads(e.removeprefix(b"data: "))["text_output"] is not None
                       for e in events)  # fmt: skip

            async with aiohttp.ClientSession() as session:
                wrong = f"{mixed.group_url}/api/chat"
                payload = {"model": "llama2:13b", "messages": HELLO}
                async with session.post(wrong, json=payload) as resp:
                    assert resp.status == 404  # a vLLM model is not on the Ollama API
                    assert "speaks this API" in (await resp.json())["error"]["message"]


class TestColdStart:
    """An Ollama node with the model loaded wins over one that would have to load it."""

    async def test_loaded_node_preferred(self) -> None:
        """While the hot node has free slots, no request goes to the cold node."""
        nodes = {
            "hot": EmulatorConfig(kind="ollama", models=("mistral:7b", "llama3.1:8b"),
                                  preload=("mistral:7b",), slots=4, **FAST),
            "cold": EmulatorConfig(kind="ollama", models=("mistral:7b", "llama3.1:8b"),
                                   preload=("llama3.1:8b",), slots=4, **FAST),
        }  # fmt: skip
        async with _cluster(nodes) as mixed, aiohttp.ClientSession() as session:
            url = f"{mixed.group_url}/v1/chat/completions"
            body = {"model": "mistral:7b", "messages": HELLO, "max_tokens": 8}

            async def one() -> str:
                async with session.post(url, json=body) as resp:
                    assert resp.status == 200
                    return resp.headers["X-Inference-Node"]

            served: Counter[str] = Counter()
            for _ in range(5):  # bursts of 3 concurrent: within the hot node's 4 slots
                served.update(await asyncio.gather(*(one() for _ in range(3))))
        assert served == {"hot": 15}


class TestGarbage:
    """A backend answering garbage is marked degraded and its requests go elsewhere."""

    async def test_garbage_fails_over(self) -> None:
        """Non-JSON answers from one node never reach the client; that node is degraded."""
        nodes = {
            "good": EmulatorConfig(kind="vllm", models=("llama3.1:8b",), **FAST),
            "bad": EmulatorConfig(kind="vllm", models=("llama3.1:8b",), **FAST),
        }
        async with _cluster(nodes) as mixed, aiohttp.ClientSession() as session:
            faults = f"{mixed.emulators['bad'].url}/_emulator/faults"
            async with session.post(faults, json={"mode": "garbage"}) as resp:
                assert resp.status == 200
            url = f"{mixed.group_url}/v1/chat/completions"

            async def ask(stream: bool) -> str:
                body = {"model": "llama3.1:8b", "messages": HELLO, "max_tokens": 4,
                        "stream": stream}  # fmt: skip
                async with session.post(url, json=body) as resp:
                    assert resp.status == 200
                    raw = await resp.read()
                    node = resp.headers["X-Inference-Node"]
                if stream:
                    assert raw.endswith(b"data: [DONE]\n\n")
                    assert b'"error"' not in raw
                else:
                    assert orjson.loads(raw)["choices"][0]["message"]["content"]
                return node

            # At once, so that the router's own counts spread them over both nodes whatever
            # it learned of either (one after another, a node that answered well is preferred).
            served = await asyncio.gather(*(ask(stream) for stream in (False, True) * 4))
            async with session.get(f"{mixed.router.url}/api/server-groups/{GROUP}/nodes") as r:
                states = {n["name"]: n for n in (await r.json())["nodes"]}
        assert set(served) == {"good"}
        assert states["bad"]["failures"] >= 1
