"""Triton's metrics endpoint, on its own port like ``:8002`` (backends.md §5.3).

Written as prometheus-cpp writes it: HELP and TYPE for every family (even one without
samples), names as registered (no ``_total``), labels in name order. Per-model series carry
``model`` and ``version`` and exist while the model is loaded; GPU series carry ``gpu_uuid``.
The metrics server answers only ``GET /metrics``: other paths are an empty 400, other methods
405 ``{"error":"Method Not Allowed"}``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from .engine import Engine
from .exposition import Family, render
from .job import Job
from .streaming import json_response

VERSION = "1"
POWER_IDLE_W, POWER_LIMIT_W = 30.0, 300.0
IO_US = 20  # the emulator's per-request tensor copy time, in and out

_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
    ),
)
_GPU_GAUGES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
    ("nv_gpu_power_usage", "GPU power usage in watts"),
    ("nv_gpu_power_limit", "GPU power management limit in watts"),
)


@dataclass(slots=True)
class ModelCounters:
    """Cumulative per-model statistics, as Triton's metric reporter keeps them."""

    values: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


class TritonMetrics:
    """Per-model counters fed by finished jobs and rejections; gauges read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.models = {name: ModelCounters() for name in engine.models}

    def reject(self, model: str) -> None:
        """A request refused by the model's queue policy."""
        self.models[model].failures["REJECTED"] += 1

    def observe(self, job: Job) -> None:
        counters = self.models[job.model.name]
        if not job.done:
            counters.failures["BACKEND" if job.errored else "CANCELED"] += 1
            return
        end = job.ended_at or job.admitted_at
        slot = job.slot_at or end
        values = counters.values
        for name in (
            "nv_inference_request_success",
            "nv_inference_count",
            "nv_inference_exec_count",
        ):
            values[name] += 1
        values["nv_inference_request_duration_us"] += int((end - job.admitted_at) * 1e6)
        values["nv_inference_queue_duration_us"] += int((slot - job.admitted_at) * 1e6)
        values["nv_inference_compute_infer_duration_us"] += int((end - slot) * 1e6)
        values["nv_inference_compute_input_duration_us"] += IO_US
        values["nv_inference_compute_output_duration_us"] += IO_US

    def families(self) -> list[Family]:
        engine = self.engine
        loaded = [st for st in engine.models.values() if st.loaded]
        out: list[Family] = []
        for name, doc in _COUNTERS:
            fam = Family(name, "counter", doc)
            for st in loaded:
                counters = self.models[st.name]
                if name == "nv_inference_request_failure":
                    for reason in ("BACKEND", "CANCELED", "OTHER", "REJECTED"):
                        labels = {"model": st.name, "reason": reason, "version": VERSION}
                        fam.add(counters.failures[reason], labels)
                else:
                    fam.add(counters.values[name], {"model": st.name, "version": VERSION})
            out.append(fam)
        pending = Family(
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution per-model.",
        )
        for st in loaded:
            pending.add(st.waiting, {"model": st.name, "version": VERSION})
        out.append(pending)
        load = Family("nv_model_load_duration_secs", "gauge", "Model load time in seconds")
        for st in loaded:
            load.add(round(st.load_s, 6), {"model": st.name, "version": VERSION})
        out.append(load)
        out.extend(self._gpu_families())
        return out

    def _gpu_families(self) -> list[Family]:
        reports = self.engine.gpu_reports()
        families = [Family(name, "gauge", doc) for name, doc in _GPU_GAUGES]
        for report in reports:
            labels = {"gpu_uuid": gpu_uuid(self.engine.config.gpu_name, report.index)}
            util = (report.utilization_pct or 0.0) / 100.0
            values = (
                util,
                report.memory_total_bytes,
                report.memory_used_bytes,
                POWER_IDLE_W + (POWER_LIMIT_W - POWER_IDLE_W) * util,
                POWER_LIMIT_W,
            )
            for fam, value in zip(families, values, strict=True):
                fam.add(value, labels)
        return families


def gpu_uuid(gpu_name: str, index: int) -> str:
    """A stable ``GPU-…`` UUID for an emulated GPU, as DCGM labels it."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'emulated-gpu/{gpu_name}/{index}')}"


TRITON_METRICS = web.AppKey("emulator.triton_metrics", TritonMetrics)
MAIN_APP = web.AppKey("emulator.main_app", web.Application)


def attach(app: web.Application, engine: Engine) -> None:
    metrics = TritonMetrics(engine)
    engine.listeners.append(metrics.observe)
    app[TRITON_METRICS] = metrics


async def _serve(request: web.Request) -> web.Response:
    if request.method != "GET":
        return json_response({"error": "Method Not Allowed"}, 405)
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if request.path != "/metrics":
        return web.Response(status=400, headers=headers)
    metrics = request.app[MAIN_APP][TRITON_METRICS]
    return web.Response(body=render(metrics.families(), blank_line_after=False), headers=headers)


def metrics_app(main: web.Application) -> web.Application:
    """The metrics server's app; it reads the engine of ``main`` (already started)."""
    app = web.Application()
    app[MAIN_APP] = main
    app.router.add_route("*", "/{tail:.*}", _serve)
    return app
