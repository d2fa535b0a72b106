"""TGI's ``/metrics`` as its metrics-rs exporter writes it (backends.md §4.3).

Names are as registered (no ``_total``), each family has the HELP TGI describes it with and is
followed by a blank line, and a series appears only once touched (``tgi_request_failure`` has
an ``err`` label per failure kind seen). Duration buckets are TGI's: 35 steps growing by 1.5
from 0.00015 s; token-count buckets are hundredths of the model's token limits.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from .engine import Engine
from .exposition import Family, Histogram, render
from .job import Job

DURATION_BUCKETS = tuple(0.0001 * 1.5 ** (i + 1) for i in range(35))
_DURATIONS = (
    ("tgi_request_duration", "Total time spent processing the request"),
    ("tgi_request_validation_duration", "Time spent validating the request"),
    ("tgi_request_queue_duration", "Time spent in the queue per request"),
    ("tgi_request_inference_duration", "Request inference duration"),
    ("tgi_request_mean_time_per_token_duration", "Mean time per token per request"),
)
_GAUGES = (
    ("tgi_queue_size", "Current queue size"),
    ("tgi_batch_current_size", "Current batch size"),
    ("tgi_batch_current_max_tokens", "Maximum tokens for the current batch"),
    ("tgi_batch_max_total_tokens", None),
)
VALIDATION_S = 0.0002  # the emulator's tokenisation and validation time


class TgiMetrics:
    """Counters and histograms TGI records per request, plus gauges read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0
        self.successes = 0
        self.failures: Counter[str] = Counter()
        self.durations = {name: Histogram(DURATION_BUCKETS) for name, _ in _DURATIONS}
        limit = engine.config.context_length
        steps = [limit / 100 * (i + 1) for i in range(100)]
        self.input_length = Histogram(steps)
        self.generated = Histogram(steps)
        self.max_new_tokens = Histogram(steps)

    def arrive(self) -> None:
        """A generation request arrived (``tgi_request_count`` counts it before validation)."""
        self.requests += 1

    def validated(self, input_tokens: int, max_new_tokens: int) -> None:
        self.input_length.observe(input_tokens)
        self.max_new_tokens.observe(max_new_tokens)

    def fail(self, err: str) -> None:
        """``err``: validation, generation, overloaded, incomplete, template or dropped."""
        self.failures[err] += 1

    def observe(self, job: Job) -> None:
        """Record a finished job (an engine listener)."""
        if job.errored:
            self.fail("generation")
            return
        if not job.done or job.slot_at is None or job.ended_at is None:
            self.fail("dropped")
            return
        self.successes += 1
        inference = job.ended_at - job.slot_at
        timings = (
            job.ended_at - job.admitted_at + VALIDATION_S,
            VALIDATION_S,
            job.slot_at - job.admitted_at,
            inference,
            inference / max(1, job.generated),
        )
        for (name, _), seconds in zip(_DURATIONS, timings, strict=True):
            self.durations[name].observe(seconds)
        self.generated.observe(job.generated)

    def families(self) -> list[Family]:
        engine = self.engine
        st = next(iter(engine.models.values()))
        gauges = (engine.waiting, st.gate.busy, st.kv_tokens, engine.kv_capacity(st))
        out = [
            Family(name, "gauge", doc).add(value)
            for (name, doc), value in zip(_GAUGES, gauges, strict=True)
        ]
        out.append(Family("tgi_request_count", "counter", "Total number of requests"))
        out[-1].add(self.requests)
        if self.successes:
            out.append(Family("tgi_request_success", "counter", "Number of successful requests"))
            out[-1].add(self.successes)
        if self.failures:
            failures = Family("tgi_request_failure", "counter")
            for err, count in sorted(self.failures.items()):
                failures.add(count, {"err": err})
            out.append(failures)
        histograms = [(self.durations[name], name, doc) for name, doc in _DURATIONS]
        histograms += [
            (self.input_length, "tgi_request_input_length", "Input token length per request"),
            (self.generated, "tgi_request_generated_tokens", "Generated tokens per request"),
            (self.max_new_tokens, "tgi_request_max_new_tokens", "Maximum new tokens per request"),
        ]
        out.extend(h.family(name, doc) for h, name, doc in histograms if h.count)
        return out


TGI_METRICS = web.AppKey("emulator.tgi_metrics", TgiMetrics)


def attach(app: web.Application, engine: Engine) -> None:
    metrics = TgiMetrics(engine)
    engine.listeners.append(metrics.observe)
    app[TGI_METRICS] = metrics


async def metrics(request: web.Request) -> web.Response:
    text = render(request.app[TGI_METRICS].families(), blank_line_after=True)
    return web.Response(body=text, headers={"Content-Type": "text/plain; charset=utf-8"})
