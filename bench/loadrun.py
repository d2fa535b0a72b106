"""Locust as child processes (one local runner, or a master and N workers on loopback), with
a progress line read from the records the users write, and the generator's CPU use.

Locust runs headless in its own processes so gevent never meets this asyncio loop. Exceeding
~90% CPU in a generator process means its timings are not to be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

LOCUSTFILE = Path(__file__).parent / "locustfile.py"
CPU_LIMIT_PERCENT = 90.0
STOP_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class LocustPlan:
    """One Locust run: where to send, how many users for how long, where records go."""

    host: str
    scenario: Path
    records: Path
    users: int
    spawn_rate: float
    duration_s: float
    warmup_s: float = 0.0
    workers: int = 0  # 0: one local process; N: a master and N workers on loopback
    mode: str = ""
    rate: float = 0.0
    label: str = "load"
    log: Path | None = None
    seed: int = 0

    def bench_args(self) -> list[str]:
        args = [
            "--bench-scenario",
            str(self.scenario),
            "--bench-records",
            str(self.records),
            "--bench-processes",
            str(max(1, self.workers)),
        ]
        if self.mode:
            args += ["--bench-mode", self.mode]
        if self.rate:
            args += ["--bench-rate", str(self.rate)]
        if self.seed:
            args += ["--bench-seed", str(self.seed)]
        return args

    def run_args(self) -> list[str]:
        return [
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "-u",
            str(self.users),
            "-r",
            str(self.spawn_rate),
            "-t",
            f"{max(1, round(self.duration_s))}s",
            "--stop-timeout",
            str(STOP_TIMEOUT_S),
            "--host",
            self.host,
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
        ]


@dataclass(slots=True)
class Tally:
    """Running counts read from the record files."""

    requests: int = 0
    errors: int = 0
    tokens: int = 0
    offsets: dict[Path, int] = field(default_factory=dict)

    def read(self, folder: Path) -> None:
        for path in folder.glob("records-*.jsonl"):
            with path.open("rb") as fh:
                fh.seek(self.offsets.get(path, 0))
                data = fh.read()
            complete = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + complete
            for line in data[:complete].splitlines():
                rec = orjson.loads(line)
                self.requests += 1
                self.errors += rec["error"] is not None
                self.tokens += rec["completion_tokens"] or len(rec["token_times"])


@dataclass(frozen=True, slots=True)
class LocustResult:
    returncodes: tuple[int, ...]
    elapsed_s: float
    cpu_percent: tuple[float, ...]  # per generator process (workers, or the local runner)

    @property
    def cpu_ok(self) -> bool:
        return all(c < CPU_LIMIT_PERCENT for c in self.cpu_percent)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def empty_records_folder(folder: Path) -> None:
    """Make ``folder`` and drop the records of any earlier run in it."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("records-*.jsonl"):
        old.unlink()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(args: list[str], log: Path | None) -> asyncio.subprocess.Process:
    out = log.open("ab") if log is not None else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", *args, stdout=out, stderr=out
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


async def _progress(plan: LocustPlan, start: float, stream: bool) -> None:
    tally = Tally()
    last_print = 0.0
    while True:
        await asyncio.sleep(1.0)
        tally.read(plan.records)
        elapsed = time.monotonic() - start
        phase = "warm-up" if elapsed < plan.warmup_s else "steady"
        if elapsed > plan.duration_s:
            phase = "finishing streams"
        line = (
            f"[{plan.label}] {elapsed:5.0f}/{plan.duration_s:.0f}s {phase:>17}  "
            f"requests {tally.requests}  errors {tally.errors}  "
            f"tokens/s {tally.tokens / max(elapsed, 1e-9):7.1f}"
        )
        if stream:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif elapsed - last_print >= 10:
            print(line, file=sys.stderr, flush=True)
            last_print = elapsed


async def _start_generators(plan: LocustPlan) -> list[asyncio.subprocess.Process]:
    """Locust alone, or a master and its workers (the master first)."""
    if not plan.workers:
        return [await _spawn([*plan.run_args(), *plan.bench_args()], plan.log)]
    port = _free_port()
    master = [*plan.run_args(), "--master", "--expect-workers", str(plan.workers),
              "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)]  # fmt: skip
    procs = [await _spawn([*master, *plan.bench_args()], plan.log)]
    worker = ["-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
              "--master-port", str(port), "--loglevel", "WARNING"]  # fmt: skip
    for _ in range(plan.workers):
        procs.append(await _spawn([*worker, *plan.bench_args()], plan.log))
    return procs


async def run_locust(plan: LocustPlan, *, progress: bool = True) -> LocustResult:
    """Run Locust headless to the end of the plan (streams in flight are let finish)."""
    empty_records_folder(plan.records)
    procs = await _start_generators(plan)
    generators = procs[1:] if plan.workers else procs
    start = time.monotonic()
    ticker = asyncio.create_task(_progress(plan, start, sys.stderr.isatty())) if progress else None
    # CPU over the steady part only (imports and spawning excluded): from warm-up to the end.
    first: tuple[float, list[float]] | None = None
    last: tuple[float, list[float]] | None = None
    try:
        while any(p.returncode is None for p in generators):
            now = time.monotonic() - start
            if plan.warmup_s <= now <= plan.duration_s:
                sample = (now, [cpu_seconds(p.pid) for p in generators])
                first = first or sample
                last = sample
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 0.5)
        codes = tuple([await p.wait() for p in procs])
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
                await p.wait()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if sys.stderr.isatty():
                print(file=sys.stderr)
    elapsed = time.monotonic() - start
    cpu: tuple[float, ...] = ()
    if first is not None and last is not None and last[0] > first[0]:
        span = last[0] - first[0]
        cpu = tuple(100.0 * (b - a) / span for a, b in zip(first[1], last[1], strict=True))
    return LocustResult(returncodes=codes, elapsed_s=elapsed, cpu_percent=cpu)
