"""A supervised loop fails loudly and comes back: logged, restarted with backoff, counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter

from node_protocol.supervision import Backoff, Supervised, TaskState, not_ready

QUICK = Backoff(first_s=0.01, max_s=0.04, healthy_s=60.0)


def restart_counter() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    return registry, Counter("t_task_restarts", "Restarts.", ["task"], registry=registry)


def restarts_counted(registry: CollectorRegistry, task: str) -> float | None:
    return registry.get_sample_value("t_task_restarts_total", {"task": task})


def logged_delays(caplog: pytest.LogCaptureFixture, name: str) -> list[float]:
    """The delays the supervisor logged for ``name``'s restarts, in order."""
    delays = []
    for record in caplog.records:
        args = record.args
        ours = record.name == "node_protocol.supervision"
        if ours and isinstance(args, tuple) and args[0] == name:
            delay = args[2]
            assert isinstance(delay, float)
            delays.append(delay)
    return delays


class Failing:
    """A loop body that raises its first ``failures`` runs, then runs until cancelled."""

    def __init__(self, failures: int, on_run: Callable[[], None] | None = None) -> None:
        self.failures = failures
        self.runs = 0
        self.on_run = on_run
        self.settled = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.on_run is not None:
            self.on_run()
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.settled.set()
        await asyncio.Event().wait()


async def wait_for(cond: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - the supervisor has no event to wait on
            await asyncio.sleep(0.005)


class TestRestarts:
    """A failed run is logged with its traceback, counted and started again."""

    async def test_failure_is_logged_counted_and_restarted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two failures: two ERROR records carrying the exception and its traceback, the
        counter at 2 under the task's label, and a third run that keeps running."""
        registry, counter = restart_counter()
        body = Failing(2)
        async with Supervised("poller", body, restarts=counter, backoff=QUICK) as task:
            assert restarts_counted(registry, "poller") == 0.0  # exported before any failure
            async with asyncio.timeout(5):
                await body.settled.wait()
            assert task.state is TaskState.RUNNING
            assert task.restarts == 2
            assert task.last_error == "RuntimeError: boom 2"
            assert restarts_counted(registry, "poller") == 2.0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2
        assert all(r.exc_info is not None for r in errors)
        assert "raise RuntimeError" in caplog.text  # the traceback, not just the message
        assert "boom 1" in errors[0].getMessage()

    async def test_label_groups_tasks_in_the_metric(self) -> None:
        """Tasks of one kind (one per router link) share a label value, not one each."""
        registry, counter = restart_counter()
        first, second = Failing(1), Failing(1)
        async with (
            Supervised("link a", first, restarts=counter, label="link", backoff=QUICK),
            Supervised("link b", second, restarts=counter, label="link", backoff=QUICK),
        ):
            async with asyncio.timeout(5):
                await first.settled.wait()
                await second.settled.wait()
        assert restarts_counted(registry, "link") == 2.0

    async def test_a_run_that_returns_is_restarted(self) -> None:
        """A loop meant to run until stopped that returns is a failure too."""
        runs = 0

        async def returns_twice() -> None:
            nonlocal runs
            runs += 1
            if runs > 2:
                await asyncio.Event().wait()

        async with Supervised("quitter", returns_twice, backoff=QUICK) as task:
            await wait_for(lambda: runs == 3)
            assert task.restarts == 2
            assert task.last_error is not None
            assert "returned" in task.last_error


class TestBackoff:
    """The delay doubles per failure in a row, up to its bound, and starts over after a
    healthy run."""

    async def test_delay_doubles_up_to_the_bound(self, caplog: pytest.LogCaptureFixture) -> None:
        """Five failures in a row wait 0.01, 0.02, 0.04, 0.04, 0.04 s."""
        body = Failing(5)
        async with Supervised("flaky", body, backoff=QUICK):
            async with asyncio.timeout(5):
                await body.settled.wait()
        assert logged_delays(caplog, "flaky") == [0.01, 0.02, 0.04, 0.04, 0.04]

    async def test_healthy_run_resets_the_delay(self, caplog: pytest.LogCaptureFixture) -> None:
        """A run that lasted ``healthy_s`` before it failed is followed by the first delay
        again, not the doubled one."""
        now = 0.0

        def clock() -> float:
            return now

        def tick() -> None:
            nonlocal now
            now += 100.0 if body.runs == 3 else 0.0  # the third run lasts past healthy_s

        body = Failing(4, on_run=tick)
        async with Supervised("steady", body, backoff=QUICK, clock=clock):
            async with asyncio.timeout(5):
                await body.settled.wait()
        assert logged_delays(caplog, "steady") == [0.01, 0.02, 0.01, 0.02]


class TestStopAndReadiness:
    """Stopping is clean in any state; readiness names the task that is down."""

    @pytest.mark.parametrize("failures", [0, 1])
    async def test_stop_is_clean_while_running_or_restarting(self, failures: int) -> None:
        """Stopped while running (no failure) or while waiting out a long backoff: stop()
        returns at once and the task has ended."""
        body = Failing(failures)
        slow = Backoff(first_s=30.0, max_s=30.0)
        task = Supervised("stoppable", body, backoff=slow)
        task.start()
        want = TaskState.RESTARTING if failures else TaskState.RUNNING
        await wait_for(lambda: task.state is want and body.runs == 1)
        async with asyncio.timeout(1):
            await task.stop()
        assert task.state is TaskState.STOPPED
        assert not task.ok

    async def test_not_ready_names_the_task_and_its_error(self) -> None:
        """While a task waits to restart, readiness says which and why; once it runs again
        (and for tasks that never failed) there is nothing to say."""
        body = Failing(1)
        fine = Supervised("fine", Failing(0))
        flaky = Supervised("flaky", body, backoff=Backoff(first_s=0.3, max_s=0.3))
        async with fine, flaky:
            await wait_for(lambda: flaky.state is TaskState.RESTARTING)
            assert not_ready([fine, flaky]) == "task flaky is restarting after RuntimeError: boom 1"
            assert flaky.view() == {
                "state": "restarting",
                "restarts": 1,
                "lastError": "RuntimeError: boom 1",
            }
            async with asyncio.timeout(5):
                await body.settled.wait()
            assert not_ready([fine, flaky]) is None

    def test_backoff_rejects_nonsense(self) -> None:
        """A zero first delay, or a bound under it, fails at construction."""
        with pytest.raises(ValueError, match="backoff"):
            Backoff(first_s=0.0)
        with pytest.raises(ValueError, match="backoff"):
            Backoff(first_s=2.0, max_s=1.0)
