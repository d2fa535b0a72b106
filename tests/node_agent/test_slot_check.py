"""The router's slot check (``X-Router-Slot-Check: N``) and the agent's busy reply.

Behind several router replicas a router may send a request to a node whose slots another
replica has just taken. The agent answers such a request 503 ``node_busy`` at once, without
calling the backend, when it already has N or more requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node_agent.app import RunningAgent, serve
from node_protocol.wire import NODE_BUSY_HEADER, SLOT_CHECK_HEADER

from .conftest import FakeBackend, TritonServers, agent_settings, wait_until

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = CHAT | {"stream": True}
PATH = "/v1/chat/completions"


@asynccontextmanager
async def held_streams(
    client: aiohttp.ClientSession,
    agent: RunningAgent,
    count: int,
    gate: asyncio.Event,
    body: dict[str, Any] = STREAM,
) -> AsyncIterator[None]:
    """``count`` streams the backend holds at ``gate``, each past its first chunk; on exit the
    gate opens and each stream is read to its end."""
    async with AsyncExitStack() as stack:
        held = []
        for _ in range(count):
            r = await stack.enter_async_context(client.post(f"{agent.url}{PATH}", json=body))
            assert r.status == 200
            async with asyncio.timeout(5):
                await r.content.readuntil(b"\n\n")
            held.append(r)
        assert agent.stats.in_flight == count
        yield
        gate.set()
        async with asyncio.timeout(5):
            for r in held:
                await r.read()


async def metric_statuses(client: aiohttp.ClientSession, agent: RunningAgent) -> set[str]:
    """The status labels of ``node_agent_requests_total`` for the chat route."""
    text = await (await client.get(f"{agent.url}/metrics")).text()
    return {
        s.labels["status"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "node_agent_requests_total" and s.labels.get("path") == PATH
    }


async def assert_busy(r: aiohttp.ClientResponse, in_flight: int) -> None:
    """A busy answer: 503, the agent's count in ``X-Node-Busy``, code ``node_busy``."""
    assert r.status == 503
    assert r.headers[NODE_BUSY_HEADER] == str(in_flight)
    assert (await r.json())["error"]["code"] == "node_busy"


class TestBusy:
    """With N or more requests in flight, a slot check for N is answered 503 by the agent."""

    @pytest.mark.parametrize("held", [2, 3])
    async def test_full_node_answers_busy_without_the_backend(
        self, vllm: tuple[FakeBackend, str], held: int
    ) -> None:
        """N (or more) streams held open and ``X-Router-Slot-Check: 2``: the agent answers 503
        at once with the OpenAI envelope (code ``node_busy``), ``Content-Type:
        application/json`` and ``X-Node-Busy: <in flight>``; the backend never sees the request,
        and the reply is not counted in flight, in ``requests_total`` or the request metrics."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with held_streams(client, agent, held, gate):
                seen = len(fake.state.requests)
                total = agent.stats.requests_total
                async with asyncio.timeout(2):
                    r = await client.post(
                        f"{agent.url}{PATH}", json=CHAT, headers={SLOT_CHECK_HEADER: "2"}
                    )
                assert r.status == 503
                assert r.headers["Content-Type"].startswith("application/json")
                assert r.headers[NODE_BUSY_HEADER] == str(held)
                assert await r.json() == {
                    "error": {
                        "message": f"node busy: {held} requests for the model in flight, 2 slots",
                        "type": "api_error",
                        "param": None,
                        "code": "node_busy",
                    }
                }
                assert len(fake.state.requests) == seen
                assert agent.stats.in_flight == held
                assert agent.stats.requests_total == total
            await wait_until(lambda: agent.stats.in_flight == 0)
            assert await metric_statuses(client, agent) == {"200"}

    async def test_last_slot_taken_once(self, vllm: tuple[FakeBackend, str]) -> None:
        """Two requests racing for the last free slot: one is forwarded, the other is busy
        (the check and the in-flight count happen together)."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            async with held_streams(client, agent, 1, gate):
                answers = await asyncio.gather(
                    *(
                        client.post(
                            f"{agent.url}{PATH}", json=STREAM, headers={SLOT_CHECK_HEADER: "2"}
                        )
                        for _ in range(2)
                    )
                )
                assert sorted(r.status for r in answers) == [200, 503]
                assert len(fake.state.requests) == 2
            for r in answers:
                await r.read()
            await wait_until(lambda: agent.stats.in_flight == 0)

    async def test_infer_prompt_shape_is_checked(self, vllm: tuple[FakeBackend, str]) -> None:
        """The ``/infer`` prompt shape (the agent's whole-answer exchange) is checked too."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with (
            serve(agent_settings(url)) as agent,
            aiohttp.ClientSession() as client,
            held_streams(client, agent, 1, gate),
        ):
            r = await client.post(
                f"{agent.url}/infer",
                json={"prompt": "hi", "model": "m"},
                headers={SLOT_CHECK_HEADER: "1"},
            )
            await assert_busy(r, 1)
            assert len(fake.state.requests) == 1

    async def test_triton_translated_route_is_checked(self, triton: TritonServers) -> None:
        """A route translated for Triton (the answer held open by the agent) is checked too."""
        ctl = triton.fake.ctl
        gate = ctl.gate = asyncio.Event()
        chat = CHAT | {"model": "llama3"}
        async with (
            serve(agent_settings(triton.url)) as agent,
            aiohttp.ClientSession() as client,
            held_streams(client, agent, 1, gate, chat | {"stream": True}),
        ):
            seen = len(ctl.requests)
            r = await client.post(f"{agent.url}{PATH}", json=chat, headers={SLOT_CHECK_HEADER: "1"})
            await assert_busy(r, 1)
            assert len(ctl.requests) == seen


class TestForwarded:
    """With a free slot, or no valid check, the request goes to the backend as usual."""

    @pytest.mark.parametrize("held", [0, 1])
    async def test_free_slot_is_forwarded_without_the_header(
        self, vllm: tuple[FakeBackend, str], held: int
    ) -> None:
        """Fewer than N in flight (here 0 or 1 of 2): forwarded and answered normally, and the
        backend does not receive ``X-Router-Slot-Check`` (the agent never passes it on)."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with (
            serve(agent_settings(url)) as agent,
            aiohttp.ClientSession() as client,
            held_streams(client, agent, held, gate),
        ):
            r = await client.post(f"{agent.url}{PATH}", json=CHAT, headers={SLOT_CHECK_HEADER: "2"})
            assert r.status == 200
            assert NODE_BUSY_HEADER not in r.headers
            assert (await r.json())["usage"]["completion_tokens"] == 7
        assert len(fake.state.requests) == held + 1
        _, seen, _ = fake.state.requests[-1]
        assert SLOT_CHECK_HEADER not in seen

    @pytest.mark.parametrize("value", ["abc", "0", "-1", "", "1.5", "+1", "1e3", "0x1"])
    async def test_invalid_value_means_no_check(
        self, vllm: tuple[FakeBackend, str], value: str
    ) -> None:
        """A value that is not a positive decimal integer is ignored: with a request already
        in flight the request is forwarded and answered 200, not 503."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with (
            serve(agent_settings(url)) as agent,
            aiohttp.ClientSession() as client,
            held_streams(client, agent, 1, gate),
        ):
            r = await client.post(
                f"{agent.url}{PATH}", json=CHAT, headers={SLOT_CHECK_HEADER: value}
            )
            assert r.status == 200
        assert len(fake.state.requests) == 2
        assert SLOT_CHECK_HEADER not in fake.state.requests[-1][1]


async def models_known(agent: RunningAgent, count: int) -> None:
    """Wait until the agent's latest report lists ``count`` models."""
    await wait_until(
        lambda: agent.reporter.latest is not None and len(agent.reporter.latest.models) == count
    )


class TestPerModel:
    """A check is about one model's slots: requests for other models do not fill them, where
    each model has slots of its own (Ollama)."""

    async def test_other_models_requests_leave_a_models_slots_free(
        self, ollama: tuple[FakeBackend, str]
    ) -> None:
        """Two streams of mistral held on an Ollama node that also has llama3.1:8b: a check for
        2 slots lets the llama3.1:8b request through (200), and finds mistral busy under either
        of its names, with the node's whole count in ``X-Node-Busy``."""
        fake, url = ollama
        gate = fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            await models_known(agent, 2)
            async with held_streams(client, agent, 2, gate, STREAM | {"model": "mistral"}):
                check = {SLOT_CHECK_HEADER: "2"}
                llama = CHAT | {"model": "llama3.1:8b"}
                r = await client.post(f"{agent.url}{PATH}", json=llama, headers=check)
                assert r.status == 200
                assert (await r.json())["model"] == "llama3.1:8b"
                for name in ("mistral", "mistral:latest"):
                    r = await client.post(
                        f"{agent.url}{PATH}", json=CHAT | {"model": name}, headers=check
                    )
                    await assert_busy(r, 2)
            await wait_until(lambda: agent.stats.in_flight == 0)

    async def test_shared_slots_count_every_model(self, vllm: tuple[FakeBackend, str]) -> None:
        """vLLM's LoRA adapter shares the base model's engine: streams of the base fill the
        slots a check for the adapter is about."""
        fake, url = vllm
        gate = fake.state.gate = asyncio.Event()
        async with serve(agent_settings(url)) as agent, aiohttp.ClientSession() as client:
            await models_known(agent, 2)
            base = STREAM | {"model": "llama-3.1-8b"}
            async with held_streams(client, agent, 2, gate, base):
                r = await client.post(
                    f"{agent.url}{PATH}",
                    json=CHAT | {"model": "sql-lora"},
                    headers={SLOT_CHECK_HEADER: "2"},
                )
                await assert_busy(r, 2)
