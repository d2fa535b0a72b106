"""``python -m bench``: capacity validation, router overhead and the CI gate.

    python -m bench run [--scenario default] [--target-url URL] [--workers N] [--overhead]
    python -m bench overhead [--quick] [--baseline REV] [--plant-delay-ms MS] [--plant-burn-ms MS]
    python -m bench ci [--plant-delay-ms MS] [--plant-burn-ms MS]
    python -m bench policies [--duration S] [--policies A,B,...] [--json] [--out DIR]
    python -m bench replicas [--workers N] [--max-parallel N] [--seconds S]
    python -m bench prefix [--policies A,B,...] [--conversations N] [--turns N] [--quick]
    python -m bench instructions [--seconds N] [--baseline REV] [--out FILE]

``run`` exits 1 when a target is missed, ``ci`` when the gate fails (after one rerun),
``policies`` when the real router orders routing policies unlike the simulator, ``prefix``
when a request through real llama-servers failed.
Reports go to ``results/bench/<name>/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bench.baseline import BaselineError, baseline_tree
from bench.ci import ci
from bench.instructions import add_parser as add_instructions_parser
from bench.instructions import run_cli as run_instructions
from bench.overhead.suite import OverheadSettings, run_overhead
from bench.policy_check import add_parser as add_policies_parser
from bench.policy_check import run_cli as run_policies
from bench.prefix import add_parser as add_prefix_parser
from bench.prefix import run_cli as run_prefix
from bench.replica_check import add_parser as add_replicas_parser
from bench.replica_check import run_cli as run_replicas
from bench.report import write_overhead_reports, write_reports
from bench.runner import RunOptions, run_scenario, say
from bench.scenario import ScenarioError, load_scenario, scenario_path
from bench.topology import NodeSettings, RouterWrapper

RESULTS = Path("results/bench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="validate a cluster's capacity under a scenario")
    run.add_argument("--scenario", default="default", help="name in bench/scenarios or a path")
    run.add_argument("--target-url", help="an external OpenAI base URL (…/v1): no cluster started")
    run.add_argument("--workers", type=int, default=0, help="Locust workers (0: one process)")
    run.add_argument("--no-calibration", action="store_true")
    run.add_argument("--overhead", action="store_true", help="also run the overhead benchmark")
    run.add_argument("--out", type=Path)
    for name in ("overhead", "ci"):
        cmd = sub.add_parser(
            name,
            help={
                "overhead": "router overhead vs direct and references",
                "ci": "the regression gate (make bench-ci)",
            }[name],
        )
        cmd.add_argument("--out", type=Path)
        cmd.add_argument(
            "--plant-delay-ms",
            type=float,
            default=0.0,
            help="run a router that sleeps this long per request (proves the gate)",
        )
        cmd.add_argument(
            "--plant-burn-ms",
            type=float,
            default=0.0,
            help="run a router that spins the CPU this long per request",
        )
    sub.choices["overhead"].add_argument("--quick", action="store_true", help="fewer rounds")
    sub.choices["overhead"].add_argument(
        "--baseline",
        metavar="REV",
        help="also run the router of this git revision, side by side (ratios 'router/baseline')",
    )
    sub.choices["ci"].add_argument("--scenario", default="ci")
    sub.choices["ci"].add_argument("--workers", type=int, default=0)
    add_policies_parser(sub)
    add_replicas_parser(sub)
    add_prefix_parser(sub)
    add_instructions_parser(sub)
    return p


def _wrapper(args: argparse.Namespace) -> RouterWrapper | None:
    if args.plant_delay_ms or args.plant_burn_ms:
        return RouterWrapper(delay_ms=args.plant_delay_ms, burn_ms=args.plant_burn_ms)
    return None


async def _run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    out = args.out or RESULTS / scenario.name
    outcome = await run_scenario(
        RunOptions(
            scenario=scenario,
            scenario_path=scenario_path(args.scenario),
            out=out,
            target_url=args.target_url,
            workers=args.workers,
            calibrate=not args.no_calibration,
            overhead=OverheadSettings() if args.overhead else None,
        )
    )
    paths = write_reports(outcome, out)
    for check in outcome.checks():
        say(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    say(f"{'PASS' if outcome.passed else 'FAIL'}: {paths['html']} (also report.json, report.md)")
    return 0 if outcome.passed else 1


async def _overhead(args: argparse.Namespace) -> int:
    settings = OverheadSettings(node=NodeSettings())
    if args.quick:
        settings = OverheadSettings(latency_rounds=150, warmup_rounds=20, rounds=3, slice_s=1.0)
    out = args.out or RESULTS / "overhead"
    with baseline_tree(args.baseline) as baseline:
        result = await run_overhead(settings, out / "logs", _wrapper(args), baseline)
    paths = write_overhead_reports(result, out)
    for target in result.targets:
        state = {True: "MET", False: "MISSED", None: "n/a"}[target.met]
        measured = "n/a" if target.measured is None else f"{target.measured:.3f}"
        say(f"  {state:6} {target.name}: {measured} ({target.kind} {target.limit:g})")
    say(f"report: {paths['html']}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            code = uvloop.run(_run(args))
        elif args.command == "overhead":
            code = uvloop.run(_overhead(args))
        elif args.command == "policies":
            code = uvloop.run(run_policies(args))
        elif args.command == "replicas":
            code = uvloop.run(run_replicas(args))
        elif args.command == "prefix":
            code = uvloop.run(run_prefix(args))
        elif args.command == "instructions":
            code = uvloop.run(run_instructions(args))
        else:
            out = args.out or RESULTS / "ci"
            code = uvloop.run(ci(args.scenario, out, _wrapper(args), args.workers))
    except (ScenarioError, BaselineError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
