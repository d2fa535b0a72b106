"""The CI attempt: the ``ci`` scenario with the overhead pair, the ratio thresholds of its
``[gate]`` table, and the hook for ``bench/micro``."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench.gate import Attempt, GateCheck, GateResult, GateSpec, gate_markdown, run_gate
from bench.micro import SLACK_ENV
from bench.overhead.suite import OverheadSettings
from bench.report import write_reports
from bench.runner import RunOptions, run_scenario, say
from bench.scenario import load_scenario, scenario_path
from bench.topology import RouterWrapper

MICRO_TIMEOUT_S = 240.0
MICRO_SLACK = "1.5"  # the budgets' slack in the gate (see bench/micro/__init__.py)
MICRO_AGAIN = 3  # fresh processes for what was over its budget (see measure_again)
MICRO_FLAGS = ("--benchmark-warmup=on", "--benchmark-disable-gc", "--benchmark-min-rounds=20")
REPO = Path(__file__).resolve().parent.parent


async def micro_checks(out: Path) -> tuple[dict[str, float], list[GateCheck]]:
    """Hook for the micro-benchmarks (``bench/micro``, owned elsewhere).

    With a ``bench/micro/__main__.py``, ``python -m bench.micro --json PATH`` runs and the
    ``"ratios"`` object of that JSON joins the gate's ratios (bounds in ``[gate.ratios]``).
    Otherwise its pytest-benchmark files run with the method's flags and must pass.
    """
    folder = REPO / "bench" / "micro"
    path = out / "micro.json"
    if (folder / "__main__.py").exists():
        argv = ["-m", "bench.micro", "--json", str(path)]
    elif any(folder.glob("test_*.py")):
        argv = [
            "-m",
            "pytest",
            "bench/micro",
            "-q",
            "-rf",
            "-p",
            "no:cacheprovider",
            *MICRO_FLAGS,
            f"--benchmark-json={path}",
        ]
    else:
        return {}, [GateCheck("micro-benchmarks", True, "none in bench/micro yet (hook idle)")]
    say("micro-benchmarks: python " + " ".join(argv))
    code, failed = await _micro_run(argv)
    if code is None:
        return {}, [GateCheck("micro-benchmarks", False, f"timed out after {MICRO_TIMEOUT_S:g}s")]
    detail = f"exit status {code} ({path})"
    if code != 0 and failed and argv[1] == "pytest":
        code, more = await measure_again(_micro_run, argv, failed, out)
        detail += more
    check = GateCheck("micro-benchmarks", code == 0, detail)
    ratios: dict[str, float] = {}
    if argv[1] == "bench.micro" and code == 0:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
        ratios = {str(k): float(v) for k, v in data.get("ratios", {}).items()}
    return ratios, [check]


MicroRun = Callable[[list[str]], Awaitable[tuple[int | None, list[str]]]]


async def measure_again(
    run: MicroRun, argv: list[str], failed: list[str], out: Path
) -> tuple[int | None, str]:
    """Measure what was over its budget again, each time in a fresh process, up to
    ``MICRO_AGAIN`` times while any is still over: the exit status of the last run and what
    each run said. The same decision loop runs at one of two speeds on this machine (16 nodes
    with the prompt term: about 23 or 36 us a decision, the same code, seed and process),
    switching every tenth of a second to a few seconds; a process measured a moment later
    often meets the faster one, where code that got slower is over its budget every time."""
    code: int | None = 1
    detail = ""
    for number in range(1, MICRO_AGAIN + 1):
        name = f"micro-again-{number}.json"
        again = [*argv[:2], *failed, *argv[3:-1], f"--benchmark-json={out / name}"]
        say("micro-benchmarks over budget, again in a fresh process: " + " ".join(failed))
        code, failed = await run(again)
        detail += f"; again ({number}): exit status {code}, over budget: {failed or 'none'}"
        if code == 0 or not failed:
            break
    return code, detail


async def _micro_run(argv: list[str]) -> tuple[int | None, list[str]]:
    """Run the micro-benchmarks; their exit status (None: timed out) and the failed tests."""
    env = os.environ | {SLACK_ENV: MICRO_SLACK}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), MICRO_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, []
    failed = re.findall(rb"^FAILED (\S+)", stdout, re.MULTILINE)
    return proc.returncode, [f.decode() for f in failed]


def write_gate(result: GateResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
    (out / "gate.md").write_text(gate_markdown(result), encoding="utf-8")


async def ci(scenario_name: str, out: Path, wrapper: RouterWrapper | None, workers: int) -> int:
    path = scenario_path(scenario_name)
    scenario = load_scenario(scenario_name)
    raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    overhead = OverheadSettings.from_toml(raw.get("overhead", {}))
    spec = GateSpec.from_toml(path)
    if wrapper is not None:
        say(
            f"planted delay: router slowed by {wrapper.delay_ms:g} ms sleep + "
            f"{wrapper.burn_ms:g} ms CPU per request (overhead benchmark)"
        )

    async def attempt(number: int) -> Attempt:
        folder = out / f"attempt-{number}"
        say(f"gate attempt {number}")
        outcome = await run_scenario(
            RunOptions(
                scenario=scenario,
                scenario_path=path,
                out=folder,
                workers=workers,
                overhead=overhead,
                wrapper=wrapper,
            )
        )
        write_reports(outcome, folder)
        checks = [GateCheck(c.name, c.passed, c.detail) for c in outcome.checks()]
        ratios = dict(outcome.overhead.ratios) if outcome.overhead is not None else {}
        micro, micro_results = await micro_checks(folder)
        ratios.update(micro)
        checks += micro_results
        checks += [t.check(ratios) for t in spec.thresholds]
        for c in checks:
            say(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
        return Attempt(checks=checks, ratios=ratios, folder=str(folder))

    result: GateResult = await run_gate(attempt, spec.reruns)
    write_gate(result, out)
    say(
        f"gate {'PASS' if result.passed else 'FAIL'} after {len(result.attempts)} attempt(s): "
        f"{out / 'gate.md'}"
    )
    return 0 if result.passed else 1
