"""``python -m bench.sim [SCENARIO ...]``: run scenarios, print a table (or JSON), write plots.

Examples::

    python -m bench.sim hetero-85                 # table + results/sim/hetero-85.json + plot
    python -m bench.sim replicas-4 --json         # one JSON object per scenario on stdout
    python -m bench.sim scale-1000 --policies least_loaded   # a million requests, one policy
    python -m bench.sim all --size 0.25 --no-plot
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.sim.metrics import COLUMNS, table
from bench.sim.scenarios import SCENARIOS, load_sweep, run
from bench.sim.svg import line_chart

SWEEP_LOADS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SWEEP_POLICIES = ("clairvoyant", "least_loaded", "power_of_two", "least_connections", "round_robin",
                  "random")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["hetero-85"],
                        help=f"any of: {', '.join(SCENARIOS)}, or 'all'")  # fmt: skip
    parser.add_argument("--size", type=float, default=1.0, help="scale of the request counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", default="", help="comma-separated (default: the scenario's)")
    parser.add_argument("--json", action="store_true", help="print JSON, one line per scenario")
    parser.add_argument("--out", type=Path, default=Path("results/sim"), help="results folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the p99-vs-load sweep")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    policies = [p for p in args.policies.split(",") if p]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        report = run(name, args.size, args.seed, policies)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            print(f"\n== {name} (size {args.size}, seed {args.seed}, {report['wall_s']} s)")
            print(table(report["policies"], (*COLUMNS, "wall_s")))
            if "checks" in report:
                print("checks:", json.dumps(report["checks"]))
    if not args.no_plot:
        plot = args.out / "p99_ttft_vs_load.svg"
        requests = max(2000, int(8000 * args.size))
        sweep = load_sweep(SWEEP_POLICIES, SWEEP_LOADS, requests, args.seed)
        chart = line_chart(
            "hetero fleet: p99 TTFT vs load", "load (share of capacity)", "p99 TTFT (s)",
            SWEEP_LOADS, sweep,
        )  # fmt: skip
        plot.write_text(chart)
        (args.out / "p99_ttft_vs_load.json").write_text(
            json.dumps({"loads": SWEEP_LOADS, "p99_ttft_s": sweep}, indent=2) + "\n"
        )
        print(f"plot: {plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
