"""``python -m bench prefix``: what prefix-cache-aware routing gains on real engines.

For each policy in turn, a fresh fleet (:func:`bench.llamacpp.fleet.launch_fleet`): three real
``llama-server`` s (``--parallel 2``, prompt caching on as by default, ``--metrics``) serving a
random-weight model sized so that prefill dominates a long prompt's first token
(:data:`.workload.MODEL`), a node agent beside each, and the router with one group set to the
policy. Every conversation of :mod:`.workload` then runs at once through the router
(:mod:`.client`); :mod:`.report` sums up each policy: the engines' cached-token share, later
turns' TTFT at the client, failures and the busiest node, with ratios to round robin.

Before the policies, one cold long prompt on a server of its own times the first token that
caching saves. Each policy runs ``--runs`` times on fresh fleets, the policies interleaved.
The summary goes to ``OUT/prefix.json``, each fleet's logs and per-turn records to
``OUT/<policy>/run-<n>/``. Exit 1 when a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.llamacpp.fleet import AGENT_ARGS, launch_fleet, llama_fleet_engines
from bench.llamacpp.model import ensure
from bench.llamacpp.paths import NotBuiltError
from bench.llamacpp.servers import llama_server
from bench.records import ClientRecord
from bench.runner import say
from router.scheduling import POLICIES
from router.settings import RouterSettings

from .client import MODEL_NAME, Turn, drive, stream_turn
from .report import add_ratios, render, summarize
from .workload import KINDS, MODEL, QUICK, Settings, conversations, engine_flags, probe_prompt

SERVERS = 3
PARALLEL = 2
CONTEXT = 8192  # shared by a server's slots: 4096 tokens each, room for a whole conversation
GROUP = "prefix"
RESULTS = Path("results/bench/prefix")
PROBES = 3
RUNS = 3  # per policy: one run of 60 turns on a busy 2-core machine is noisy


def default_policies() -> tuple[str, ...]:
    """Round robin, least loaded and the router's default (once, if it is one of those)."""
    default = RouterSettings.model_fields["default_policy"].default
    return tuple(dict.fromkeys(("round_robin", "least_loaded", default)))


async def _probe_once(session: aiohttp.ClientSession, url: str, prompt: str) -> Turn:
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "go"}]
    turn = Turn(-1, -1, 1, ClientRecord(MODEL_NAME, url, 4, time.time(), time.perf_counter()))
    await stream_turn(session, url, messages, turn)
    if turn.record.error is not None or turn.record.ttft_s is None:
        raise RuntimeError(f"the cold probe failed: {turn.record.error} {turn.record.detail}")
    return turn


async def cold_probe(model: Path, folder: Path, seed: int) -> dict[str, Any]:
    """The first token of a long prompt on a server of its own with nothing of it cached: the
    median of ``PROBES`` distinct prompts, one at a time."""
    engine = llama_server(model, parallel=PARALLEL, context=CONTEXT, log_path=folder / "probe.log")
    await engine.start()
    try:
        url = f"{engine.url}/v1/chat/completions"
        # llama-server ends the connection after a stream without saying so: one per request.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            turns = [await _probe_once(session, url, probe_prompt(seed, i)) for i in range(PROBES)]
    finally:
        await engine.stop()
    ttfts = [t.record.ttft_s * 1000 for t in turns if t.record.ttft_s is not None]
    return {
        "prompt_tokens": turns[0].record.prompt_tokens,
        "ttft_ms": round(statistics.median(ttfts), 1),
        "ttfts_ms": [round(v, 1) for v in ttfts],
    }


def _write_router_config(path: Path, policy: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[[groups]]\nname = "{GROUP}"\npolicy = "{policy}"\n', encoding="utf-8")


async def measure(
    policy: str,
    model: Path,
    s: Settings,
    folder: Path,
    cache_ram_mib: int | None = None,
    server_flags: tuple[str, ...] = (),
) -> list[Turn]:
    """One run of one policy on a fresh fleet (every cache cold); its turns, also to a file.
    ``cache_ram_mib``: the servers' host-memory prompt cache (None: the server's default);
    ``server_flags``: more llama-server flags."""
    config = folder / "router.toml"
    await asyncio.to_thread(_write_router_config, config, policy)
    engines = llama_fleet_engines(
        model,
        SERVERS,
        folder,
        parallel=PARALLEL,
        context=CONTEXT,
        extra=engine_flags(cache_ram_mib, server_flags),
    )
    agent_args = (*AGENT_ARGS, "--backend-kind", "llamacpp", "--max-parallel", str(PARALLEL))
    router_args = ("--config", str(config))
    async with launch_fleet(
        engines, folder, GROUP, router_args=router_args, agent_args=agent_args
    ) as fleet:
        say(f"{policy}: {s.conversations} conversations x {s.turns} turns, seed {s.seed}")
        turns = await drive(fleet.base_url, conversations(s), s)
    lines = "".join(json.dumps(t.summary()) + "\n" for t in turns)
    await asyncio.to_thread((folder / "turns.jsonl").write_text, lines, encoding="utf-8")
    return turns


async def run_prefix(
    policies: tuple[str, ...],
    s: Settings,
    runs: int,
    out: Path,
    cache_ram_mib: int | None = None,
    server_flags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every policy ``runs`` times, interleaved (each round runs every policy once, on the
    round's own seed, so that the machine's load drifts over all of them alike); the report
    (also written to ``out/prefix.json``). ``cache_ram_mib``: the servers' ``--cache-ram``;
    ``server_flags``: more llama-server flags."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    model = await asyncio.to_thread(ensure, MODEL)
    load_before = os.getloadavg()[0]
    probe = await cold_probe(model, out, s.seed)
    say(f"cold probe: {probe['prompt_tokens']} tokens, first token in {probe['ttft_ms']} ms")
    turns: dict[str, list[list[Turn]]] = {policy: [] for policy in policies}
    for r in range(runs):
        round_settings = dataclasses.replace(s, seed=s.seed + r)
        for policy in policies:
            folder = out / policy / f"run-{r + 1}"
            turns[policy].append(
                await measure(policy, model, round_settings, folder, cache_ram_mib, server_flags)
            )
    nodes = [f"llama-{i}" for i in range(1, SERVERS + 1)]
    rows = [summarize(policy, turns[policy], nodes) for policy in policies]
    add_ratios(rows)
    report = {
        "workload": {
            "runs": runs,
            "conversations": s.conversations,
            "turns": s.turns,
            "kinds": min(KINDS, s.conversations),
            "max_think_s": s.max_think_s,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
        },
        "model": {"layers": MODEL.layers, "width": MODEL.width, "ffn": MODEL.ffn},
        "servers": SERVERS,
        "parallel": PARALLEL,
        "cache_ram_mib": cache_ram_mib,
        "server_flags": list(server_flags),
        "cold_probe": probe,
        "load_average": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        "policies": rows,
    }
    text = json.dumps(report, indent=2) + "\n"
    await asyncio.to_thread((out / "prefix.json").write_text, text, encoding="utf-8")
    return report


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("prefix", help="prefix-cache routing over real llama-servers")
    cmd.add_argument("--policies", default=",".join(default_policies()), help="comma-separated")
    full = Settings()
    cmd.add_argument("--conversations", type=int, help=f"default {full.conversations}")
    cmd.add_argument("--turns", type=int, help=f"default {full.turns}")
    cmd.add_argument("--seed", type=int, help=f"default {full.seed}")
    cmd.add_argument("--runs", type=int, help=f"runs per policy (default {RUNS}; --quick: 1)")
    cmd.add_argument(
        "--cache-ram",
        type=int,
        metavar="MIB",
        help="each server's host-memory prompt cache (llama-server --cache-ram; 0: none; "
        "default: the server's own, 8 GiB)",
    )
    cmd.add_argument(
        "--server-flags",
        default="",
        metavar="FLAGS",
        help="more llama-server flags, as one string (e.g. '-sps 0' or '-kvu')",
    )
    cmd.add_argument("--quick", action="store_true", help="a small run (for a test)")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--out", type=Path, help=f"default: {RESULTS}")


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    return Settings(
        conversations=args.conversations or base.conversations,
        turns=args.turns or base.turns,
        max_think_s=base.max_think_s,
        max_tokens=base.max_tokens,
        seed=base.seed if args.seed is None else args.seed,
    )


async def run_cli(args: argparse.Namespace) -> int:
    policies = tuple(dict.fromkeys(p for p in args.policies.split(",") if p))
    unknown = [p for p in policies if p not in POLICIES]
    try:
        if unknown or not policies:
            raise ValueError(f"policies must be some of {', '.join(POLICIES)}, not {unknown}")
        settings = _settings(args)
        runs = args.runs or (1 if args.quick else RUNS)
        if runs < 1:
            raise ValueError("--runs must be at least 1")
        flags = tuple(shlex.split(args.server_flags))
    except ValueError as exc:
        say(str(exc))
        return 2
    try:
        report = await run_prefix(
            policies, settings, runs, args.out or RESULTS, args.cache_ram, flags
        )
    except NotBuiltError as exc:
        say(str(exc))
        return 2
    print(json.dumps(report) if args.json else render(report), flush=True)
    return 1 if any(row["failed"] for row in report["policies"]) else 0
