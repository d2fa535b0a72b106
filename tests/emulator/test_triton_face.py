"""The Triton face: 200/400 health, the repository index and explicit load/unload, KServe infer,
the generate extension's framing, and metrics on their own port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.emulator import EmulatorConfig, RunningEmulator, serve

from .conftest import eventually, fast_config, metric_samples, post_raw, set_fault, sse_events

LOADED, COLD = "llama3.1:8b", "mistral:7b"


@pytest.fixture
async def triton() -> AsyncIterator[RunningEmulator]:
    async with serve(fast_config("triton", preload=(LOADED,))) as running:
        yield running


async def index(http: aiohttp.ClientSession, url: str, body: Any = None) -> list[dict[str, Any]]:
    async with http.post(url + "/v2/repository/index", json=body) as resp:
        assert resp.status == 200
        entries: list[dict[str, Any]] = await resp.json()
        return entries


async def status_of(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def small_pair(capacity_file: Path, **overrides: Any) -> EmulatorConfig:
    """Two 8 GiB models of the test table, the first loaded at start."""
    base: dict[str, Any] = {
        "models": ("small-a", "small-b"),
        "capacity_file": capacity_file,
        "preload": ("small-a",),
    }
    return fast_config("triton", **(base | overrides))


def tensor(text: str) -> dict[str, Any]:
    return {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [text]}


class TestHealth:
    """Liveness is an empty 200; readiness is an empty 200, or 400 (not 503) when not ready."""

    async def test_live_and_ready(
        self, triton: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        assert await status_of(http, triton.url + "/v2/health/live") == (200, b"")
        assert await status_of(http, triton.url + "/v2/health/ready") == (200, b"")
        await set_fault(http, triton.url, mode="error_500")
        assert await status_of(http, triton.url + "/v2/health/ready") == (400, b"")
        assert (await status_of(http, triton.url + "/v2/health/live"))[0] == 200

    async def test_model_ready(self, triton: RunningEmulator, http: aiohttp.ClientSession) -> None:
        base = triton.url + "/v2/models/"
        assert await status_of(http, base + LOADED + "/ready") == (200, b"")
        assert await status_of(http, base + LOADED + "/versions/1/ready") == (200, b"")
        not_ready = (400, b'{"error":"Model version not ready"}')
        assert await status_of(http, base + COLD + "/ready") == not_ready
        assert await status_of(http, base + "nope/ready") == not_ready


class TestRepository:
    """The index reports READY / LOADING / UNAVAILABLE; load and unload are explicit."""

    async def test_index_load_and_unload(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        async with serve(small_pair(capacity_file, load_time_scale=0.05)) as running:
            url = running.url
            assert await index(http, url) == [
                {"name": "small-a", "version": "1", "state": "READY"},
                {"name": "small-b"},
            ]
            loading = asyncio.create_task(
                post_raw(http, url + "/v2/repository/models/small-b/load", b"")
            )
            await eventually(lambda: running.engine.models["small-b"].load_task is not None)
            during = await index(http, url)
            ready_during = await status_of(http, url + "/v2/health/ready")
            status, body, _ = await loading
            after = await index(http, url, {"ready": True})
            unload = await post_raw(http, url + "/v2/repository/models/small-a/unload", b"")
            final = await index(http, url)
            ready_after = await status_of(http, url + "/v2/health/ready")
        assert during[1] == {"name": "small-b", "version": "1", "state": "LOADING"}
        assert ready_during[0] == 400  # strict readiness: a model is loading
        assert (status, body) == (200, b"")
        assert running.engine.models["small-b"].load_s == pytest.approx(0.1, abs=0.05)
        assert [e["name"] for e in after] == ["small-a", "small-b"]
        assert unload[0] == 200
        assert final[0] == {
            "name": "small-a",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        assert ready_after[0] == 200  # unloaded on purpose is tolerated

    async def test_unload_waits_for_in_flight_requests(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("triton", preload=(LOADED,), tok_s=100.0)) as running:
            url = running.url
            busy = asyncio.create_task(
                post_raw(
                    http,
                    f"{url}/v2/models/{LOADED}/generate",
                    {"text_input": "x", "parameters": {"max_tokens": 10}},
                )
            )
            await eventually(lambda: running.engine.in_flight == 1)
            await post_raw(http, f"{url}/v2/repository/models/{LOADED}/unload", b"")
            unloading = (await index(http, url))[0]["state"]
            refused = await post_raw(
                http, f"{url}/v2/models/{LOADED}/generate", {"text_input": "x"}
            )
            assert (await busy)[0] == 200
            await eventually(lambda: not running.engine.models[LOADED].loaded)
        assert unloading == "UNLOADING"
        assert refused[0] == 404
        assert orjson.loads(refused[1]) == {
            "error": f"Request for unknown model: '{LOADED}' has no available versions"
        }

    async def test_load_that_does_not_fit_fails(
        self, http: aiohttp.ClientSession, capacity_file: Path
    ) -> None:
        async with serve(small_pair(capacity_file, gpu_memory_gb=(12.0,))) as running:
            status, raw, _ = await post_raw(
                http, running.url + "/v2/repository/models/small-b/load", b""
            )
            entry = (await index(http, running.url))[1]
            ready = await status_of(http, running.url + "/v2/health/ready")
            unknown = await post_raw(http, running.url + "/v2/repository/models/nope/load", b"")
        assert status == 400
        assert orjson.loads(raw)["error"].startswith(
            "load failed for model 'small-b': version 1 is at UNAVAILABLE state: "
            "Internal: out of memory"
        )
        assert (entry["state"], entry["reason"][:13]) == ("UNAVAILABLE", "out of memory")
        assert ready[0] == 400
        assert unknown[0] == 400
        assert orjson.loads(unknown[1]) == {
            "error": "failed to load 'nope', failed to poll from model repository"
        }


class TestMetadata:
    """/v2 and model metadata follow KServe; unknown models and versions are 404."""

    async def test_server_and_model_metadata(
        self, triton: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(triton.url + "/v2") as resp:
            server = await resp.json()
        async with http.get(f"{triton.url}/v2/models/{LOADED}") as resp:
            model = await resp.json()
        assert (server["name"], server["version"]) == ("triton", "2.59.0")
        assert "model_repository" in server["extensions"]
        assert (model["name"], model["versions"]) == (LOADED, ["1"])
        assert {"name": "text_input", "datatype": "BYTES", "shape": [1]} in model["inputs"]
        assert model["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]

    @pytest.mark.parametrize(
        ("path", "status", "error"),
        [
            (f"/v2/models/{LOADED}/versions/2", 404,
             f"Request for unknown model: '{LOADED}' version 2 is not found"),
            ("/v2/models/nope", 404, "Request for unknown model: 'nope' is not found"),
            (f"/v2/models/{COLD}", 404, f"Request for unknown model: '{COLD}' is not found"),
            ("/v2/nothing/here", 404, "Not Found"),
            ("/metrics", 404, "Not Found"),
        ],
    )  # fmt: skip
    async def test_not_found(
        self,
        triton: RunningEmulator,
        http: aiohttp.ClientSession,
        path: str,
        status: int,
        error: str,
    ) -> None:
        got, raw = await status_of(http, triton.url + path)
        assert (got, orjson.loads(raw)) == (status, {"error": error})

    async def test_wrong_method(self, triton: RunningEmulator, http: aiohttp.ClientSession) -> None:
        async with http.get(triton.url + "/v2/repository/index") as resp:
            assert (resp.status, await resp.json()) == (405, {"error": "Method Not Allowed"})


class TestInference:
    """KServe infer and the generate extension: text in, text out, Triton's framing."""

    async def test_infer_with_bytes_tensors(
        self, triton: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        sampling = orjson.dumps({"max_tokens": 2}).decode()
        body = {
            "id": "r1",
            "inputs": [
                tensor("Hello"),
                {
                    "name": "sampling_parameters",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [sampling],
                },
            ],
        }
        status, raw, _ = await post_raw(http, f"{triton.url}/v2/models/{LOADED}/infer", body)
        assert status == 200
        assert orjson.loads(raw) == {
            "id": "r1",
            "model_name": LOADED,
            "model_version": "1",
            "outputs": [
                {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [" the quick"]}
            ],
        }

    @pytest.mark.parametrize(
        ("inputs", "error"),
        [
            ([], "[request id: <id_unknown>] expected number of inputs between 1 and 4 but got 0 "
             f"inputs for model '{LOADED}'"),
            ([tensor("x"), {"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}],
             f"[request id: <id_unknown>] unexpected inference input 'image' for model '{LOADED}'"),
        ],
    )  # fmt: skip
    async def test_infer_input_errors(
        self, triton: RunningEmulator, http: aiohttp.ClientSession, inputs: Any, error: str
    ) -> None:
        status, raw, _ = await post_raw(
            http, f"{triton.url}/v2/models/{LOADED}/infer", {"inputs": inputs}
        )
        assert (status, orjson.loads(raw)) == (400, {"error": error})

    async def test_generate_body(
        self, triton: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"id": "g1", "text_input": "Hi", "parameters": {"max_tokens": 3}}
        status, raw, _ = await post_raw(http, f"{triton.url}/v2/models/{LOADED}/generate", body)
        assert status == 200
        assert raw == (
            b'{"id":"g1","model_name":"llama3.1:8b","model_version":"1",'
            b'"text_output":" the quick brown"}'
        )

    async def test_generate_stream_raw_framing(
        self, triton: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        body = {"text_input": "Hi", "parameters": {"max_tokens": 2}}
        status, raw, headers = await post_raw(
            http, f"{triton.url}/v2/models/{LOADED}/generate_stream", body
        )
        assert (status, headers["Content-Type"]) == (200, "text/event-stream; charset=utf-8")
        assert raw == (
            b'data: {"model_name":"llama3.1:8b","model_version":"1","text_output":" the"}\n\n'
            b'data: {"model_name":"llama3.1:8b","model_version":"1","text_output":" quick"}\n\n'
        )

    async def test_errors_before_and_after_the_first_event(
        self, http: aiohttp.ClientSession
    ) -> None:
        async with serve(fast_config("triton", preload=(LOADED,))) as running:
            url = f"{running.url}/v2/models/{{}}/generate_stream"
            before = await post_raw(http, url.format(COLD), {"text_input": "x"})
            await set_fault(http, running.url, mode="error_mid_stream", after=1)
            after = await post_raw(http, url.format(LOADED), {"text_input": "x"})
        assert before[0] == 404
        assert orjson.loads(before[1]) == {
            "error": f"Request for unknown model: '{COLD}' is not found"
        }
        assert after[0] == 200
        events = [orjson.loads(e) for e in sse_events(after[1])]
        assert events == [
            {"model_name": LOADED, "model_version": "1", "text_output": " the"},
            {"error": "emulated fault: the backend failed"},
        ]

    async def test_queue_cap_rejects_with_503(self, http: aiohttp.ClientSession) -> None:
        config = fast_config("triton", preload=(LOADED,), slots=1, max_queue=0, tok_s=50.0)
        async with serve(config) as running:
            url = f"{running.url}/v2/models/{LOADED}/generate"
            busy = asyncio.create_task(
                post_raw(http, url, {"text_input": "x", "parameters": {"max_tokens": 5}})
            )
            await eventually(lambda: running.engine.in_flight == 1)
            status, raw, _ = await post_raw(http, url, {"text_input": "x"})
            await busy
            assert running.metrics_url is not None
            async with http.get(running.metrics_url) as resp:
                samples = metric_samples(await resp.text())
        assert (status, orjson.loads(raw)) == (503, {"error": "Exceeds maximum queue size"})
        key = (("model", LOADED), ("reason", "REJECTED"), ("version", "1"))
        assert samples["nv_inference_request_failure_total", key] == 1


class TestMetricsPort:
    """Metrics live on their own port, in prometheus-cpp's format, with Triton's labels."""

    async def test_separate_port_names_and_labels(self, http: aiohttp.ClientSession) -> None:
        async with serve(fast_config("triton", preload=(LOADED,), slots=1, tok_s=100.0)) as running:
            url, metrics_url = running.url, running.metrics_url
            assert metrics_url is not None
            async with http.get(url + "/_emulator/state") as resp:
                state = await resp.json()
            gen = f"{url}/v2/models/{LOADED}/generate"
            await post_raw(http, gen, {"text_input": "x", "parameters": {"max_tokens": 2}})
            streams = [
                asyncio.create_task(
                    post_raw(http, gen, {"text_input": "x", "parameters": {"max_tokens": 10}})
                )
                for _ in range(3)
            ]
            await eventually(lambda: running.engine.waiting == 2)
            async with http.get(metrics_url) as resp:
                content_type = resp.headers["Content-Type"]
                text = await resp.text()
            await asyncio.gather(*streams)
            other = await status_of(http, metrics_url.replace("/metrics", "/v2"))
            async with http.post(metrics_url) as resp:
                posted = (resp.status, await resp.json())
        assert state["metricsUrl"] == metrics_url
        assert metrics_url.rsplit(":", 1)[0] == url.rsplit(":", 1)[0]
        assert metrics_url.rsplit(":", 1)[1] != url.rsplit(":", 1)[1]
        assert content_type == "text/plain; charset=utf-8"
        assert "# TYPE nv_inference_request_success counter\n" in text
        assert "\n\n" not in text
        samples = metric_samples(text)
        labels = (("model", LOADED), ("version", "1"))
        assert samples["nv_inference_pending_request_count", labels] == 2
        assert samples["nv_inference_request_success_total", labels] == 1
        assert samples["nv_inference_count_total", labels] == 1
        gpu = [k for k in samples if k[0] == "nv_gpu_memory_total_bytes"]
        assert len(gpu) == 1
        assert gpu[0][1][0][0] == "gpu_uuid"
        assert gpu[0][1][0][1].startswith("GPU-")
        assert samples[gpu[0]] == 24 * 1024**3
        assert samples["nv_gpu_memory_used_bytes", gpu[0][1]] >= 8 * 1024**3
        assert 0 < samples["nv_gpu_utilization", gpu[0][1]] <= 1
        assert other == (400, b"")
        assert posted == (405, {"error": "Method Not Allowed"})
