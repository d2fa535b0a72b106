"""The /_emulator/ endpoints: GPU report, request journal, faults, and disconnect handling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import serve
from node_protocol.wire import GpuReport

from .conftest import (
    CHAT,
    eventually,
    fast_config,
    ollama_config,
    set_fault,
    sse_events,
    vllm_config,
)


async def read_into(resp: aiohttp.ClientResponse, parts: list[bytes]) -> None:
    async for chunk in resp.content.iter_any():
        parts.append(chunk)


def stream_body(n: int) -> dict[str, Any]:
    return {**CHAT, "stream": True, "max_tokens": n}


class TestGpus:
    """/_emulator/gpus speaks GpuReport's wire shape and follows what is loaded."""

    async def test_report_shape_and_memory(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        config = ollama_config(
            models=("pair", "small-a"), capacity_file=capacity_file, gpu_memory_gb=(24.0, 24.0)
        )
        async with serve(config) as running, http.get(running.url + "/_emulator/gpus") as resp:
            gpus = (await resp.json())["gpus"]
        reports = [GpuReport.from_json(g) for g in gpus]
        assert [r.to_json() for r in reports] == gpus
        assert [r.index for r in reports] == [0, 1]
        assert reports[0].name == "NVIDIA L4 (emulated)"
        # "pair" takes 20 GiB on each GPU, so "small-a" (8 GiB) does not fit beside it
        assert all(r.memory_total_bytes == 24 * 1024**3 for r in reports)
        assert all(r.memory_used_bytes >= 20 * 1024**3 for r in reports)
        assert all(r.memory_free_bytes < 8 * 1024**3 for r in reports)

    async def test_utilisation_follows_busy_slots(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config(slots=4, tok_s=50.0)) as running:
            url = running.url
            streams = [
                asyncio.create_task(http.post(url + "/v1/chat/completions", json=stream_body(10)))
                for _ in range(2)
            ]
            await eventually(lambda: running.engine.gpu_reports()[0].utilization_pct == 50.0)
            for task in streams:
                async with await task as resp:
                    await resp.read()
            assert running.engine.gpu_reports()[0].utilization_pct == 0.0


class TestJournal:
    """/_emulator/requests shows what reached the backend, headers lower-cased."""

    async def test_tenant_header_model_and_stream_are_recorded(
        self, http: aiohttp.ClientSession
    ) -> None:
        async with serve(vllm_config()) as running:
            headers = {"X-Tenant-Id": "team-a", "X-Correlation-Id": "c-1"}
            async with http.post(
                running.url + "/v1/chat/completions", json=stream_body(2), headers=headers
            ) as resp:
                await resp.read()
            async with http.get(running.url + "/_emulator/requests") as resp:
                journal = await resp.json()
        (entry,) = journal["requests"]
        assert (entry["path"], entry["method"]) == ("/v1/chat/completions", "POST")
        assert entry["headers"]["x-tenant-id"] == "team-a"
        assert entry["headers"]["x-correlation-id"] == "c-1"
        assert (entry["model"], entry["stream"]) == (None, True)
        assert (journal["completed"], journal["cancelled"]) == (1, 0)


class TestCancellation:
    """A client that disconnects mid-stream frees the slot and bumps the cancelled count."""

    @pytest.mark.parametrize("kind", ["vllm", "ollama"])
    async def test_disconnect_mid_stream(self, http: aiohttp.ClientSession, kind: str) -> None:
        config = vllm_config(tok_s=100.0) if kind == "vllm" else ollama_config(tok_s=100.0)
        path = "/v1/chat/completions" if kind == "vllm" else "/api/chat"
        body = {**stream_body(200), "model": None if kind == "vllm" else "llama3.1:8b"}
        async with serve(config) as running:
            async with http.post(running.url + path, json=body) as resp:
                await resp.content.readline()
                await resp.content.readline()
                resp.close()
            await eventually(lambda: running.engine.cancelled == 1)
            assert running.engine.completed == 0
            assert all(st.gate.busy == 0 for st in running.engine.models.values())


class TestFaults:
    """Faults set at runtime change how requests are answered."""

    async def test_bad_fault_is_400(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config()) as running:
            async with http.post(running.url + "/_emulator/faults", json={"mode": "x"}) as resp:
                assert resp.status == 400
            echo = await set_fault(http, running.url, mode="slow", factor=3)
        assert echo == {"mode": "slow", "factor": 3.0, "after": 3}

    async def test_error_500_and_dead_health(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config()) as running:
            await set_fault(http, running.url, mode="error_500")
            async with http.post(running.url + "/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 500
                error = (await resp.json())["error"]
            async with http.get(running.url + "/health") as resp:
                assert resp.status == 503
            await set_fault(http, running.url, mode="none")
            async with http.get(running.url + "/health") as resp:
                assert resp.status == 200
        assert (error["type"], error["code"]) == ("InternalServerError", 500)

    async def test_error_500_on_ollama_native_and_openai(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config()) as running:
            await set_fault(http, running.url, mode="error_500")
            body = {"model": "llama3.1:8b", **CHAT}
            async with http.post(running.url + "/api/chat", json=body) as resp:
                native = (resp.status, await resp.json())
            async with http.post(running.url + "/v1/chat/completions", json=body) as resp:
                wrapped = (resp.status, await resp.json())
        assert native[0] == wrapped[0] == 500
        assert isinstance(native[1]["error"], str)
        assert wrapped[1]["error"]["type"] == "api_error"

    async def test_hang_sends_no_headers(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config()) as running:
            await set_fault(http, running.url, mode="hang")
            timeout = aiohttp.ClientTimeout(total=0.3)
            with pytest.raises(TimeoutError):
                async with http.post(
                    running.url + "/v1/chat/completions", json=CHAT, timeout=timeout
                ):
                    pass

    @pytest.mark.parametrize("stream", [True, False])
    async def test_die_mid_stream(self, http: aiohttp.ClientSession, stream: bool) -> None:
        async with serve(vllm_config(tok_s=500.0)) as running:
            await set_fault(http, running.url, mode="die_mid_stream", after=2)
            body = {**CHAT, "stream": stream}
            parts: list[bytes] = []
            async with http.post(running.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await read_into(resp, parts)
            await eventually(lambda: running.engine.cancelled == 1)
        received = b"".join(parts)
        if stream:
            events = sse_events(received)
            assert len(events) == 3  # role chunk and two tokens
            assert b"[DONE]" not in received
        else:
            assert received == b'{"id":'

    async def test_slow_multiplies_token_delays(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config(tok_s=1000.0, ttft_s=0.0)) as running:

            async def timed() -> float:
                loop = asyncio.get_running_loop()
                start = loop.time()
                body = {**CHAT, "max_tokens": 20}
                async with http.post(running.url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                return loop.time() - start

            await set_fault(http, running.url, mode="slow", factor=10)
            slow = await timed()
        assert slow >= 10 * 19 / 1000 * 0.9  # 19 gaps of 10 ms

    async def test_garbage_is_200_not_json(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config()) as running:
            await set_fault(http, running.url, mode="garbage")
            body = {"model": "llama3.1:8b", **CHAT}
            async with http.post(running.url + "/api/chat", json=body) as resp:
                raw = await resp.read()
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/html"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)


class TestEveryFace:
    """The /_emulator/ endpoints answer the same on every backend kind."""

    @pytest.mark.parametrize("kind", ["ollama", "vllm", "tgi", "triton", "lmstudio"])
    async def test_state_gpus_faults_and_journal(
        self, http: aiohttp.ClientSession, kind: str
    ) -> None:
        async with serve(fast_config(kind)) as running:
            url = running.url
            async with http.get(url + "/_emulator/state") as resp:
                state = await resp.json()
            async with http.get(url + "/_emulator/gpus") as resp:
                gpus = (await resp.json())["gpus"]
            echo = await set_fault(http, url, mode="slow", factor=2)
            async with http.get(url + "/v1/models") as resp:
                assert resp.status == (404 if kind == "triton" else 200)
            async with http.get(url + "/_emulator/requests") as resp:
                journal = (await resp.json())["requests"]
        assert (state["kind"], state["url"]) == (kind, url)
        assert state["metricsUrl"] == running.metrics_url
        assert (state["metricsUrl"] is None) == (kind in ("ollama", "lmstudio"))
        assert [g["index"] for g in gpus] == [0]
        assert echo["mode"] == "slow"
        assert [e["path"] for e in journal] == ["/v1/models"]


class TestErrorMidStream:
    """error_mid_stream ends a started stream with the face's own error event."""

    async def test_vllm_error_event_then_done(self, http: aiohttp.ClientSession) -> None:
        async with serve(vllm_config()) as running:
            await set_fault(http, running.url, mode="error_mid_stream", after=1)
            body = {**CHAT, "stream": True}
            async with http.post(running.url + "/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
            await eventually(lambda: running.engine.cancelled == 1)
        events = sse_events(raw)
        assert len(events) == 4  # role chunk, one token, the error, [DONE]
        assert orjson.loads(events[2])["error"]["code"] == 500
        assert events[3] == b"[DONE]"

    async def test_ollama_native_error_line(self, http: aiohttp.ClientSession) -> None:
        async with serve(ollama_config()) as running:
            await set_fault(http, running.url, mode="error_mid_stream", after=2)
            body = {"model": "llama3.1:8b", **CHAT}
            async with http.post(running.url + "/api/chat", json=body) as resp:
                lines = (await resp.read()).splitlines()
            async with http.post(running.url + "/api/chat", json={**body, "stream": False}) as resp:
                whole = (resp.status, await resp.json())
        assert len(lines) == 3
        assert orjson.loads(lines[-1]) == {"error": "emulated fault: the backend failed"}
        assert whole == (500, {"error": "emulated fault: the backend failed"})
