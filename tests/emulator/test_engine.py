"""The engine on its own: slots, queueing, token timing, batching, loading and cancellation."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.emulator.engine import Engine, EngineBusy
from bench.emulator.slots import SlotGate

from .conftest import ollama_config, vllm_config


async def run(engine: Engine, model: str, n: int | None) -> list[float]:
    """Run one request to its end and return each token's arrival time."""
    stamps: list[float] = []
    async with engine.admit(model, 10, n) as job:
        await job.ready()
        async for _ in job.tokens():
            stamps.append(time.monotonic())
    return stamps


@pytest.fixture
async def engine_factory() -> AsyncIterator[list[Engine]]:
    engines: list[Engine] = []
    yield engines
    for engine in engines:
        await engine.close()


async def started(engines: list[Engine], engine: Engine) -> Engine:
    await engine.start()
    engines.append(engine)
    return engine


class TestSlotGate:
    """Slots are handed to waiters strictly in arrival order."""

    async def test_waiters_enter_in_arrival_order(self) -> None:
        gate = SlotGate(1)
        await gate.acquire()
        order: list[int] = []

        async def enter(i: int) -> None:
            await gate.acquire()
            order.append(i)
            gate.release()

        tasks = [asyncio.create_task(enter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert gate.waiting == 5
        gate.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert gate.busy == 0

    async def test_cancelled_waiter_leaves_the_queue(self) -> None:
        gate = SlotGate(1)
        await gate.acquire()
        task = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.waiting == 0
        gate.release()
        assert gate.busy == 0


class TestTokenTiming:
    """Tokens arrive one by one at the configured rate, after the prefill delay."""

    async def test_gaps_follow_the_rate(self, engine_factory: list[Engine]) -> None:
        engine = await started(engine_factory, Engine(vllm_config(tok_s=200.0, ttft_s=0.03)))
        begin = time.monotonic()
        stamps = await run(engine, engine.config.models[0], 20)
        assert len(stamps) == 20
        assert stamps[0] - begin == pytest.approx(0.03, abs=0.02)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert statistics.median(gaps) == pytest.approx(0.005, abs=0.003)
        # deadlines make the schedule a floor; a loaded machine can only make it later
        assert 0.03 + 19 / 200 <= stamps[-1] - begin <= 2 * (0.03 + 19 / 200)

    async def test_default_length_and_finish_reasons(self, engine_factory: list[Engine]) -> None:
        engine = await started(engine_factory, Engine(vllm_config()))
        model = engine.config.models[0]
        async with engine.admit(model, 1, None) as job:
            await job.ready()
            assert [t async for t in job.tokens()][:2] == [" the", " quick"]
        assert (job.generated, job.finish_reason) == (16, "stop")
        async with engine.admit(model, 1, 3) as job:
            await job.ready()
            assert len([t async for t in job.tokens()]) == 3
        assert job.finish_reason == "length"
        assert engine.completed == 2
        assert engine.finished == {"stop": 1, "length": 1}


class TestBatching:
    """Each extra stream in the batch slows every stream by the class's batch_decay."""

    async def test_four_streams_run_slower_than_one(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(models=("steep",), capacity_file=capacity_file, tok_s=None)
        engine = await started(engine_factory, Engine(config))
        alone = await run(engine, "steep", 10)
        together = await asyncio.gather(*(run(engine, "steep", 10) for _ in range(4)))
        single = alone[-1] - alone[0]
        batched = statistics.mean(s[-1] - s[0] for s in together)
        # decay 1.0 at 4 streams: each runs at a quarter of the rate
        assert batched / single == pytest.approx(4.0, rel=0.35)


class TestQueueing:
    """Requests beyond the slots wait in line; Ollama's bounded queue refuses the overflow."""

    async def test_third_request_waits_for_a_slot(self, engine_factory: list[Engine]) -> None:
        engine = await started(engine_factory, Engine(vllm_config(slots=2, tok_s=200.0)))
        model = engine.config.models[0]
        tasks = [asyncio.create_task(run(engine, model, 5)) for _ in range(3)]
        await asyncio.sleep(0.01)
        state = engine.models[model]
        assert (state.gate.busy, state.waiting, engine.waiting) == (2, 1, 1)
        first, second, third = await asyncio.gather(*tasks)
        assert third[0] > min(first[-1], second[-1])
        assert engine.waiting == 0

    async def test_full_queue_raises_busy(self, engine_factory: list[Engine]) -> None:
        engine = await started(engine_factory, Engine(ollama_config(slots=1, max_queue=1)))
        running = engine.admit("llama3.1:8b", 1, 5)
        await running.ready()
        waiting = engine.admit("llama3.1:8b", 1, 5)
        with pytest.raises(EngineBusy):
            engine.admit("llama3.1:8b", 1, 5)
        running.close()
        waiting.close()
        assert engine.cancelled == 2


class TestCancellation:
    """A consumer that stops early releases its slot and counts as cancelled."""

    async def test_cancelled_stream_releases_the_slot(self, engine_factory: list[Engine]) -> None:
        engine = await started(engine_factory, Engine(vllm_config(slots=1, tok_s=100.0)))
        model = engine.config.models[0]
        task = asyncio.create_task(run(engine, model, 100))
        await asyncio.sleep(0.05)
        assert engine.models[model].gate.busy == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.models[model].gate.busy == 0
        assert (engine.cancelled, engine.finished["abort"]) == (1, 1)
        assert engine.models[model].kv_tokens == 0

    async def test_waiting_request_cancelled_leaves_the_queue(
        self, engine_factory: list[Engine]
    ) -> None:
        engine = await started(engine_factory, Engine(vllm_config(slots=1, tok_s=100.0)))
        model = engine.config.models[0]
        first = asyncio.create_task(run(engine, model, 5))
        second = asyncio.create_task(run(engine, model, 5))
        await asyncio.sleep(0.01)
        assert engine.waiting == 1
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert engine.waiting == 0
        assert len(await first) == 5


class TestLoading:
    """Ollama-style residency: load on demand, evict idle models LRU, honour keep-alive."""

    async def test_cold_model_loads_before_its_first_token(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(
            models=("small-a",), capacity_file=capacity_file, preload=(), load_time_scale=0.05
        )
        engine = await started(engine_factory, Engine(config))
        assert not engine.models["small-a"].loaded
        async with engine.admit("small-a", 1, 1) as job:
            await job.ready()
            assert job.load_s == pytest.approx(0.1, abs=0.05)
            assert engine.models["small-a"].loaded

    async def test_idle_least_recently_used_model_is_evicted(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(
            models=("small-a", "small-b", "small-c"),
            capacity_file=capacity_file,
            gpu_memory_gb=(16.0,),
        )
        engine = await started(engine_factory, Engine(config))
        assert engine.config.start_loaded == ("small-a", "small-b")
        await run(engine, "small-a", 1)  # small-b is now the least recently used
        await run(engine, "small-c", 1)
        loaded = {name for name, st in engine.models.items() if st.loaded}
        assert loaded == {"small-a", "small-c"}
        assert engine.gpu_reports()[0].memory_free_bytes == 0

    async def test_load_waits_while_the_resident_model_is_busy(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(
            models=("small-a", "small-b"),
            capacity_file=capacity_file,
            gpu_memory_gb=(8.0,),
            tok_s=100.0,
        )
        engine = await started(engine_factory, Engine(config))
        busy = asyncio.create_task(run(engine, "small-a", 10))
        await asyncio.sleep(0.02)
        other = await run(engine, "small-b", 1)
        assert busy.done()
        assert other[0] >= (await busy)[-1]

    async def test_keep_alive_expiry_and_zero_unload(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(models=("small-a", "small-b"), capacity_file=capacity_file)
        engine = await started(engine_factory, Engine(config))
        async with engine.admit("small-a", 1, 1, keep_alive_s=0.05) as job:
            await job.ready()
            _ = [t async for t in job.tokens()]
        async with engine.admit("small-b", 1, 1, keep_alive_s=0) as job:
            await job.ready()
            _ = [t async for t in job.tokens()]
        assert not engine.models["small-b"].loaded
        assert engine.models["small-a"].loaded
        await asyncio.sleep(0.1)
        assert not engine.models["small-a"].loaded
        assert engine.gpu_reports()[0].memory_used_bytes == 0

    async def test_request_without_keep_alive_uses_the_default(
        self, engine_factory: list[Engine], capacity_file: Path
    ) -> None:
        config = ollama_config(models=("small-a",), capacity_file=capacity_file)
        engine = await started(engine_factory, Engine(config))
        engine.unload("small-a")
        assert not engine.models["small-a"].loaded
        await run(engine, "small-a", 1)
        assert engine.models["small-a"].loaded
        assert engine.models["small-a"].keep_alive_s == 300.0
