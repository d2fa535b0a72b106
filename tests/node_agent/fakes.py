"""Fake TGI, Triton and LM Studio backends.

Paths, fields, status codes, metric names and framing follow the engines' documented APIs; the
fixtures that start them on port 0 are in ``conftest.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fake_streams import TOKENS, Controls, dumps, record, stream_frames

# --- TGI (§4) -----------------------------------------------------------------------------

TGI_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
TGI_INFO = {
    "model_id": TGI_MODEL,
    "model_sha": "e0bc86c23ce5aae1db576c8cca6f06f1f73af2db",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 4095,
    "max_total_tokens": 4096,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": "3.3.6",
    "sha": "6e8bd4c3b2f5e5c7a1b0c3e8d4f1a2b3c4d5e6f7",
    "docker_label": "sha-6e8bd4c",
}
TGI_METRICS = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 4096
# TYPE tgi_batch_max_total_tokens gauge
tgi_batch_max_total_tokens 16384
# TYPE tgi_request_count counter
tgi_request_count 17
# TYPE tgi_request_failure counter
tgi_request_failure{err="overloaded"} 2
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 3
tgi_request_duration_bucket{le="+Inf"} 15
tgi_request_duration_sum 30.5
tgi_request_duration_count 15
"""


class FakeTgi:
    """TGI's router: /health, /info, /metrics, /generate, /generate_stream, OpenAI routes."""

    def __init__(self) -> None:
        self.ctl = Controls()
        self.app = web.Application()
        r = self.app.router
        for path in ("/health", "/", "/ping"):
            r.add_get(path, self.health)
        r.add_get("/info", self.info)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models)
        r.add_post("/generate", self.generate)
        r.add_post("/generate_stream", self.generate_stream)
        r.add_post("/v1/chat/completions", self.chat)

    async def health(self, request: web.Request) -> web.Response:
        if self.ctl.health_status == 503:
            body = {"error": "unhealthy", "error_type": "healthcheck"}
            return web.json_response(body, status=503)
        return web.Response(status=self.ctl.health_status)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(TGI_INFO)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=TGI_METRICS, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": TGI_MODEL, "object": "model", "created": 0, "owned_by": TGI_MODEL}
        return web.json_response({"object": "list", "data": [card]})

    async def chat(self, request: web.Request) -> web.Response:
        """Non-streamed chat only (what /infer's prompt shape asks for)."""
        await record(request, self.ctl)
        message = {"role": "assistant", "content": "".join(TOKENS)}
        return web.json_response(
            {
                "object": "chat.completion",
                "id": "",
                "created": 1700000000,
                "model": TGI_MODEL,
                "system_fingerprint": "3.3.6-sha-6e8bd4c",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
            }
        )

    async def generate(self, request: web.Request) -> web.Response:
        await record(request, self.ctl)
        headers = {"x-generated-tokens": str(len(TOKENS)), "x-prompt-tokens": "4"}
        return web.json_response({"generated_text": "".join(TOKENS)}, headers=headers)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await record(request, self.ctl))
        details = bool((body.get("parameters") or {}).get("details"))
        frames = []
        for i, text in enumerate(TOKENS, start=1):
            last = i == len(TOKENS)
            event: dict[str, Any] = {
                "index": i,
                "token": {"id": 100 + i, "text": text, "logprob": -0.1, "special": False},
                "generated_text": "".join(TOKENS) if last else None,
                "details": None,
            }
            if last and details:
                event["details"] = {
                    "finish_reason": "length",
                    "generated_tokens": len(TOKENS),
                    "seed": None,
                    "input_length": 4,
                }
            frames.append(b"data:" + dumps(event) + b"\n\n")  # TGI writes no space
        return await stream_frames(request, self.ctl, frames, "text/event-stream")


# --- Triton (§5) --------------------------------------------------------------------------

TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llama3",version="1"} 42
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting \
execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="llama3",version="1"} 3
nv_inference_pending_request_count{model="mistral",version="1"} 0
nv_inference_pending_request_count{model="ensemble",version="1"} 2
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-bbbb"} 0.25
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 85899345920
nv_gpu_memory_total_bytes{gpu_uuid="GPU-bbbb"} 85899345920
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 42949672960
nv_gpu_memory_used_bytes{gpu_uuid="GPU-bbbb"} 1073741824
"""


@dataclass
class TritonState(Controls):
    """What the fake Triton holds: its repository index and whether it is ready or exiting."""

    ready: bool = True
    exiting: bool = False
    refuse: tuple[int, str] | None = None  # answer generate(_stream) with this error instead
    error_at: int | None = None  # the generate_stream event replaced by an error event
    index: list[dict[str, str]] = field(
        default_factory=lambda: [
            {"name": "ensemble"},
            {"name": "llama3", "version": "1", "state": "READY"},
            {"name": "mistral", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        ]
    )

    def model_ready(self, name: str) -> bool | None:
        states = [e.get("state") for e in self.index if e["name"] == name]
        return None if not states else "READY" in states


class FakeTriton:
    """Triton's KServe v2 HTTP endpoint, with its metrics on a second app (port 8002 style)."""

    def __init__(self) -> None:
        self.ctl = TritonState()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/v2", self.server)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_post("/v2/repository/index", self.repository_index)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_post(base + "/infer", self.infer)
            r.add_post(base + "/generate", self.generate)
            r.add_post(base + "/generate_stream", self.generate_stream)
        self.metrics_app = web.Application()
        self.metrics_app.router.add_get("/metrics", self.metrics)

    def _known(self, request: web.Request) -> str:
        name = request.match_info["model"]
        if self.ctl.model_ready(name) is None:
            body = {"error": f"Request for unknown model: '{name}' is not found"}
            raise web.HTTPNotFound(text=json.dumps(body), content_type="application/json")
        return name

    async def server(self, request: web.Request) -> web.Response:
        extensions = ["model_repository", "statistics", "generate"]
        return web.json_response({"name": "triton", "version": "2.59.0", "extensions": extensions})

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if self.ctl.exiting:
            return web.json_response({"error": "Server exiting"}, status=503)
        return web.Response(status=200 if self.ctl.ready else 400)

    async def repository_index(self, request: web.Request) -> web.Response:
        return web.json_response(self.ctl.index)

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = self._known(request)
        return web.json_response(
            {
                "name": name,
                "versions": ["1"],
                "platform": "vllm",
                "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
                "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        if self.ctl.model_ready(self._known(request)):
            return web.Response(status=200)
        return web.json_response({"error": "Model version not ready"}, status=400)

    async def infer(self, request: web.Request) -> web.Response:
        name = self._known(request)
        await record(request, self.ctl)
        text = "".join(TOKENS)
        output = {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [text]}
        answer = {"model_name": name, "model_version": "1", "outputs": [output]}
        headers = {}
        if "Inference-Header-Content-Length" in request.headers:
            # binary tensor extension: say where the JSON header of the answer ends
            headers["Inference-Header-Content-Length"] = str(len(json.dumps(answer)))
        return web.json_response(answer, headers=headers)

    def _refusal(self) -> web.Response | None:
        if self.ctl.refuse is None:
            return None
        status, message = self.ctl.refuse
        return web.json_response({"error": message}, status=status)

    async def generate(self, request: web.Request) -> web.Response:
        name = self._known(request)
        await record(request, self.ctl)
        if (refused := self._refusal()) is not None:
            return refused
        return web.json_response(
            {"model_name": name, "model_version": "1", "text_output": "".join(TOKENS)}
        )

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        name = self._known(request)
        await record(request, self.ctl)
        if (refused := self._refusal()) is not None:
            return refused
        frames = [
            b"data: "
            + dumps({"model_name": name, "model_version": "1", "text_output": t})
            + b"\n\n"
            for t in TOKENS
        ]  # no [DONE]: the stream just ends
        if self.ctl.error_at is not None:  # Triton's error after the stream started
            error = b'data: {"error":"CUDA out of memory"}\n\n'
            frames = [*frames[: self.ctl.error_at], error]
        return await stream_frames(request, self.ctl, frames, "text/event-stream; charset=utf-8")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=TRITON_METRICS, content_type="text/plain")


# --- LM Studio (§6) -----------------------------------------------------------------------

LMS_QWEN = "qwen2.5-7b-instruct"
LMS_LLAMA = "meta-llama-3.1-8b-instruct"


@dataclass
class LmStudioState(Controls):
    """Which REST API the fake LM Studio has (``/api/v1`` from 0.4.0, else only ``/api/v0``)."""

    api_v1: bool = True


class FakeLmStudio:
    """LM Studio's server: OpenAI routes, REST model lists, and 200 for any unknown path."""

    def __init__(self) -> None:
        self.ctl = LmStudioState()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/v1/models", self.models)
        r.add_get("/api/v1/models", self.models_v1)
        r.add_get("/api/v0/models", self.models_v0)
        r.add_route("*", "/{tail:.*}", self.anything)

    async def anything(self, request: web.Request) -> web.Response:
        # "Unexpected endpoint or method ... Returning 200 anyway" (reference §6.1).
        message = f"Unexpected endpoint or method. ({request.method} {request.path})"
        return web.json_response({"error": message})

    async def models(self, request: web.Request) -> web.Response:
        if self.ctl.health_status != 200:
            return web.Response(status=self.ctl.health_status)
        cards = [
            {"id": model_id, "object": "model", "owned_by": "organization_name"}
            for model_id in (LMS_QWEN, LMS_LLAMA)
        ]
        return web.json_response({"object": "list", "data": cards})

    async def models_v1(self, request: web.Request) -> web.Response:
        if not self.ctl.api_v1:
            return await self.anything(request)
        instance_config = {"context_length": 8192, "eval_batch_size": 512, "parallel": 4}
        return web.json_response(
            {
                "models": [
                    {
                        "type": "llm",
                        "publisher": "lmstudio-community",
                        "key": LMS_QWEN,
                        "display_name": "Qwen2.5 7B Instruct",
                        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
                        "size_bytes": 4683074240,
                        "params_string": "7B",
                        "loaded_instances": [
                            {"id": LMS_QWEN, "config": instance_config},
                            {"id": f"{LMS_QWEN}:2", "config": instance_config},
                        ],
                        "max_context_length": 32768,
                        "format": "gguf",
                    },
                    {
                        "type": "llm",
                        "publisher": "lmstudio-community",
                        "key": LMS_LLAMA,
                        "display_name": "Llama 3.1 8B Instruct",
                        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
                        "size_bytes": 4920753328,
                        "params_string": "8B",
                        "loaded_instances": [],
                        "max_context_length": 131072,
                        "format": "gguf",
                    },
                ]
            }
        )

    async def models_v0(self, request: web.Request) -> web.Response:
        common = {"object": "model", "type": "llm", "publisher": "lmstudio-community"}
        return web.json_response(
            {
                "object": "list",
                "data": [
                    common
                    | {
                        "id": LMS_QWEN,
                        "arch": "qwen2",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_K_M",
                        "state": "loaded",
                        "max_context_length": 32768,
                        "loaded_context_length": 8192,
                    },
                    common
                    | {
                        "id": LMS_LLAMA,
                        "arch": "llama",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_K_M",
                        "state": "not-loaded",
                        "max_context_length": 131072,
                    },
                ],
            }
        )
