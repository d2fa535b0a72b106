"""Locust users that stream completions through the router and keep a raw record of each.

Headless::

    locust -f bench/locustfile.py --headless -u 16 -r 16 -t 60s \\
        --host http://127.0.0.1:8080/inference-cluster/v1 \\
        --bench-scenario default --bench-records out/records

With the web UI drop ``--headless``; to scale out run ``--master --expect-workers N`` and N
``--worker --master-host HOST`` processes (pass ``--bench-processes N`` so the open-loop rate is
split between them). Each process appends one JSON line per request to
``<records>/records-<host>-<pid>.jsonl``; the numbers that count are computed from those lines
(``python -m bench``), never from Locust's rounded percentiles. Locust's UI still shows
``ttft`` and ``tpot`` (request type ``METRIC``) next to each request's end-to-end time.
"""

import locust  # gevent patches the standard library: this import comes first

# isort: split
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from geventhttpclient.response import HTTPParseError
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from bench.pacing import Pacer
from bench.records import CONNECTION, CUT, TIMEOUT, ClientRecord, status_error
from bench.scenario import MixEntry, Scenario, load_scenario
from bench.sse import SseDecoder, StreamTally

PROMPT_WORDS = ("tell", "me", "about", "the", "quiet", "river", "under", "old", "stone", "bridge")


def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("bench", "LLM benchmark (bench/locustfile.py)")
    group.add_argument(
        "--bench-scenario",
        default="default",
        env_var="BENCH_SCENARIO",
        help="scenario name or .toml path",
    )
    group.add_argument(
        "--bench-records",
        default="",
        env_var="BENCH_RECORDS",
        help="folder for the raw JSONL records (none: no records)",
    )
    group.add_argument(
        "--bench-mode",
        default="",
        choices=("", "closed", "open"),
        help="override the scenario's load mode",
    )
    group.add_argument(
        "--bench-rate", type=float, default=0.0, help="open loop: requests/s over all processes"
    )
    group.add_argument(
        "--bench-processes", type=int, default=1, help="load-generating processes sharing the rate"
    )
    group.add_argument("--bench-seed", type=int, default=0, help="0: random")


@dataclass
class BenchContext:
    """Per-process state: the scenario, the record file and, in open loop, the pacer."""

    scenario: Scenario
    rng: random.Random
    sink: IO[bytes] | None
    pacer: Pacer | None
    process: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    @classmethod
    def create(cls, options: Any) -> "BenchContext":
        scenario = load_scenario(options.bench_scenario)
        rng = random.Random(options.bench_seed or None)
        sink = None
        if options.bench_records:
            folder = Path(options.bench_records)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"records-{socket.gethostname()}-{os.getpid()}.jsonl"
            sink = (folder / name).open("ab", buffering=0)
        mode = options.bench_mode or scenario.load.mode
        pacer = None
        if mode == "open":
            rate = options.bench_rate or scenario.load.rate or 1.0
            pacer = Pacer(rate / max(1, options.bench_processes), rng)
        return cls(scenario=scenario, rng=rng, sink=sink, pacer=pacer)

    def draw(self) -> MixEntry:
        mix = self.scenario.mix
        return self.rng.choices(mix, weights=[e.weight for e in mix])[0]

    def write(self, record: ClientRecord) -> None:
        if self.sink is not None:
            self.sink.write(record.to_json())


def context_of(environment: Environment) -> BenchContext:
    """This process's context, made on first use (after workers get the master's options)."""
    ctx: BenchContext | None = getattr(environment, "bench_context", None)
    if ctx is None:
        ctx = BenchContext.create(environment.parsed_options)
        environment.bench_context = ctx  # type: ignore[attr-defined]
    return ctx


def _close_records(environment: Environment, **_: Any) -> None:
    ctx: BenchContext | None = getattr(environment, "bench_context", None)
    if ctx is not None and ctx.sink is not None:
        ctx.sink.close()
        environment.bench_context = None  # type: ignore[attr-defined]


def request_body(entry: MixEntry, rng: random.Random, force_length: bool) -> tuple[str, bytes, int]:
    """Path, JSON body and ``max_tokens`` of one request drawn from ``entry``."""
    n_prompt = rng.randint(*entry.prompt_tokens)
    max_tokens = rng.randint(*entry.max_tokens)
    words = " ".join(rng.choice(PROMPT_WORDS) for _ in range(n_prompt))
    body: dict[str, Any] = {
        "model": entry.model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if force_length:
        body.update(ignore_eos=True, min_tokens=max_tokens)
    if entry.api == "chat":
        body["messages"] = [{"role": "user", "content": words}]
        return "/chat/completions", orjson.dumps(body), max_tokens
    body["prompt"] = words
    return "/completions", orjson.dumps(body), max_tokens


class LlmUser(FastHttpUser):
    """Streams one completion after another (closed loop) or at the pacer's times (open loop)."""

    abstract = False
    wait_time = constant(0)
    network_timeout = 600.0
    connection_timeout = 10.0

    @task
    def generate(self) -> None:
        if isinstance(self.environment.runner, MasterRunner):
            return
        ctx = context_of(self.environment)
        lag = None
        if ctx.pacer is not None:
            due = ctx.pacer.take()
            time.sleep(max(0.0, due - time.perf_counter()))  # gevent's sleep (patched)
            lag = time.perf_counter() - due
        entry = ctx.draw()
        path, body, max_tokens = request_body(entry, ctx.rng, ctx.scenario.force_length)
        record = ClientRecord(
            model=entry.model,
            entry=entry.name,
            max_tokens=max_tokens,
            wall_send=time.time(),
            t_send=time.perf_counter(),
            process=ctx.process,
            dispatch_lag_s=lag,
        )
        self._stream(path, body, entry.name, record)
        ctx.write(record)
        self._metric_events(record)

    def _stream(self, path: str, body: bytes, name: str, record: ClientRecord) -> None:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        with self.client.post(
            path, data=body.decode(), headers=headers, name=name, stream=True, catch_response=True
        ) as resp:
            record.t_headers = time.perf_counter()
            record.status = resp.status_code
            if resp.headers is not None:
                record.node = resp.headers.get("X-Inference-Node")
                overhead = resp.headers.get("X-Router-Overhead-Ms")
                record.router_overhead_ms = None if overhead is None else float(overhead)
            if record.status == 0:
                error = getattr(resp, "error", None)
                timed_out = isinstance(error, TimeoutError | socket.timeout)
                record.error = TIMEOUT if timed_out else CONNECTION
                record.detail = repr(error)[:200]
            elif record.status >= 400:
                record.error = status_error(record.status)
                record.detail = (resp.text or "")[:200]
            else:
                _read_events(resp, record)
            end = record.t_last_token or record.t_done or time.perf_counter()
            resp.request_meta["response_time"] = (end - record.t_send) * 1000
            if record.error is None:
                resp.success()
            else:
                resp.failure(f"{record.error}: {record.detail or ''}"[:200])

    def _metric_events(self, record: ClientRecord) -> None:
        fire = self.environment.events.request.fire
        for name, value in (("ttft", record.ttft_s), ("tpot", record.tpot_s)):
            if value is not None and record.error is None:
                fire(
                    request_type="METRIC",
                    name=name,
                    response_time=value * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )


def _read_events(resp: Any, record: ClientRecord) -> None:
    """Read the SSE body line by line as it arrives (``iter_content`` would wait for whole
    blocks and hide token timing), feeding each event to the tally."""
    raw = resp._response  # geventhttpclient's response: readline returns what has arrived
    decoder, tally = SseDecoder(), StreamTally(record)
    try:
        while line := raw.readline(b"\n"):
            data = decoder.feed_line(line)
            if data is not None:
                tally.event(data, time.perf_counter())
    except (HTTPParseError, OSError) as exc:
        if record.error is None:
            record.error = CUT
            record.detail = repr(exc)[:200]
    tally.finish(time.perf_counter())


# Locust's event hooks are untyped.
events.init_command_line_parser.add_listener(_arguments)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_close_records)  # type: ignore[no-untyped-call]

__all__ = ["LlmUser", "locust"]
