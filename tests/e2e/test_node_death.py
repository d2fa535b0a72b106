"""No conversation is lost to a dying node, on real processes: the demo cluster's two boxes that
serve ``llama2:13b`` (Ollama and vLLM), twelve clients streaming through the official OpenAI SDK,
and the vLLM box's backend killed with SIGKILL mid-run (its agent stays). Streams that had not
shown a token go to the Ollama box; streams cut mid-way go on there. Every client gets the
whole answer as one valid stream: no error, no empty answer."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass, field

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import ClusterSpec, NodeSpec, launch
from bench.emulator.tokens import token_text

MODEL = "llama2:13b"
GROUP = "inference-cluster"
CLIENTS = 12
MAX_TOKENS = 40
WHOLE = "".join(token_text(i) for i in range(MAX_TOKENS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec() -> ClusterSpec:
    def box(name: str, kind: str, models: tuple[str, ...], gpu_gb: float) -> NodeSpec:
        return NodeSpec(name, kind, models, (gpu_gb,), tok_s=80.0, ttft_ms=10.0, slots=8)

    return ClusterSpec(
        group=GROUP,
        nodes=(
            box("gpu-box-1", "ollama", ("llama3.1:8b", MODEL), 24.0),
            box("gpu-box-2", "vllm", (MODEL,), 16.0),
        ),
        router_port=_free_port(),
        agent_args=("--report-interval", "0.5"),
    )


@dataclass
class Tally:
    whole: int = 0
    problems: list[str] = field(default_factory=list)


async def _one(client: openai.AsyncOpenAI, i: int, tally: Tally) -> None:
    """One streamed chat, read by the SDK, checked to be one whole stream."""
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"conversation {i}"}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    except openai.OpenAIError as exc:  # an error status, or an error event in the stream
        tally.problems.append(f"{i}: {exc!r}")
        return
    deltas = [c.choices[0] for c in chunks if c.choices]
    text = "".join(d.delta.content or "" for d in deltas)
    usage = chunks[-1].usage if chunks else None
    finishes = [d.finish_reason for d in deltas if d.finish_reason]
    if (
        text != WHOLE
        or len({c.id for c in chunks}) != 1
        or finishes != ["length"]
        or usage is None
        or usage.completion_tokens != MAX_TOKENS
    ):
        tally.problems.append(f"{i}: {text!r} ids={len({c.id for c in chunks})} {finishes}")
        return
    tally.whole += 1


async def _load(base_url: str, stop: asyncio.Event, tally: Tally) -> None:
    counter = iter(range(1_000_000))
    async with openai.AsyncOpenAI(base_url=base_url, api_key="-", max_retries=0) as client:

        async def worker() -> None:
            while not stop.is_set():
                await _one(client, next(counter), tally)

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))


def _counter(metrics: str, name: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == name
    )


async def test_sigkill_one_of_two_nodes_loses_no_conversation() -> None:
    """Under streaming load, SIGKILL the vLLM backend of one of the two nodes serving the
    model: every stream is served whole (0 empty answers, 0 client-visible errors), the
    spliced ones read by the official SDK as one valid stream, and some were resumed."""
    async with launch(_spec()) as cluster, aiohttp.ClientSession() as session:
        tally = Tally()
        stop = asyncio.Event()
        load = asyncio.create_task(_load(cluster.base_url, stop, tally))
        await asyncio.sleep(1.5)
        cluster.emulators["gpu-box-2"].proc.send_signal(signal.SIGKILL)
        await asyncio.sleep(2.5)
        stop.set()
        await load
        async with session.get(cluster.router.url + "/metrics") as resp:
            metrics = await resp.text()
    resumed = _counter(metrics, "router_streams_resumed_total")
    retried = _counter(metrics, "router_retries_total")
    print(f"whole={tally.whole} problems={len(tally.problems)} resumed={resumed} retried={retried}")
    assert tally.problems == []
    assert tally.whole >= CLIENTS
    assert resumed >= 1
    assert _counter(metrics, "router_streams_cut_total") == 0
