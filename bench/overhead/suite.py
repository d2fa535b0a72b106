"""Run the overhead benchmark: start the paths, measure latency then throughput, analyse."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.overhead.analysis import (
    OverheadResult,
    latency_figures,
    latency_ratios,
    overhead_targets,
    throughput_ratios,
)
from bench.overhead.wrk import generator_name, latency_rounds, measure
from bench.topology import NodeSettings, RouterWrapper, node_paths


@dataclass(frozen=True, slots=True)
class OverheadSettings:
    """How long and how hard each part runs (``[overhead]`` in a scenario file)."""

    node: NodeSettings = field(default_factory=NodeSettings)
    latency_rounds: int = 300
    warmup_rounds: int = 30
    connections: int = 32
    slice_s: float = 2.0
    rounds: int = 5
    short_max_tokens: int = 4
    stream_tokens: int = 16
    agent: bool = True

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> OverheadSettings:
        node = NodeSettings(**data.get("node", {}))
        rest = {k: v for k, v in data.items() if k != "node"}
        return replace(cls(node=node), **rest)

    def bodies(self) -> dict[str, dict[str, Any]]:
        model = self.node.model
        return {
            "short": {"model": model, "prompt": "hi", "max_tokens": self.short_max_tokens},
            "stream16": {
                "model": model,
                "prompt": "hi",
                "max_tokens": self.stream_tokens,
                "stream": True,
            },
        }


def _say(text: str) -> None:
    print(f"[overhead] {text}", file=sys.stderr, flush=True)


async def run_overhead(
    settings: OverheadSettings,
    logs: Path,
    wrapper: RouterWrapper | None = None,
    baseline: Path | None = None,
) -> OverheadResult:
    """Every path in one run: latency rounds, then throughput slices interleaved by round.
    ``baseline``: another revision's tree, whose router runs beside this one's."""
    bodies = settings.bodies()
    paths_cm = node_paths(
        settings.node, logs, agent=settings.agent, wrapper=wrapper, baseline=baseline
    )
    async with paths_cm as topo:
        _say(f"paths: {', '.join(topo.bases)}; generator: {generator_name()}")
        stream = {**bodies["stream16"], "stream_options": {"include_usage": True}}
        raw = await latency_rounds(
            {
                "targets": {p: f"{b}/completions" for p, b in topo.bases.items()},
                "body": stream,
                "rounds": settings.latency_rounds,
                "warmup_rounds": settings.warmup_rounds,
            }
        )
        per_path, added, header, errors = latency_figures(raw["targets"])
        _say(f"latency: {settings.latency_rounds} rounds at concurrency 1 done")
        rounds: dict[str, dict[str, list[float]]] = {}
        cpu: dict[str, float] = {}
        rng = random.Random(7)
        for phase, body in bodies.items():
            paths = list(topo.bases)
            for path in paths:  # warm-up slice, discarded
                await measure(f"{topo.bases[path]}/completions", body, settings.connections, 1)
            rounds[phase] = {p: [] for p in paths}
            for _ in range(settings.rounds):
                rng.shuffle(paths)
                for path in paths:
                    got = await measure(
                        f"{topo.bases[path]}/completions",
                        body,
                        settings.connections,
                        settings.slice_s,
                    )
                    rounds[phase][path].append(got.rps)
                    cpu[f"{phase} {path}"] = max(
                        cpu.get(f"{phase} {path}", 0.0), got.generator_cpu_percent
                    )
            _say(f"throughput '{phase}': {settings.rounds} rounds x {len(paths)} paths done")
        result = OverheadResult(
            generator=generator_name(),
            latency_ms=per_path,
            added_ms=added,
            router_header_ms=header,
            latency_errors=errors,
            throughput_rps=rounds,
            ratios={**latency_ratios(per_path), **throughput_ratios(rounds)},
            generator_cpu_percent=cpu,
            notes=list(topo.notes),
        )
    result.targets.extend(overhead_targets(result))
    return result
