"""The gate catches a slowed router: the real router behind the harness's wrapper with a planted
20 ms delay, measured against the bare reference proxy in the same run."""

from __future__ import annotations

from pathlib import Path

from bench.gate import GateSpec
from bench.overhead.analysis import latency_figures, latency_ratios
from bench.overhead.wrk import latency_rounds
from bench.scenario import SCENARIO_DIR
from bench.topology import NodeSettings, RouterWrapper, node_paths

RATIO = "latency ttfb_p50 router/bare proxy"


class TestPlantedDelay:
    """A router slowed by a planted delay fails the ci gate's latency ratio."""

    async def test_slowed_router_fails_the_latency_ratio(self, tmp_path: Path) -> None:
        """With 20 ms added per request the router/bare-proxy TTFB ratio passes its bound."""
        node = NodeSettings(tok_s=2000.0, slots=16)
        wrapper = RouterWrapper(delay_ms=20.0)
        async with node_paths(node, tmp_path, agent=False, wrapper=wrapper) as topo:
            body = {"model": node.model, "prompt": "hi", "max_tokens": 4, "stream": True}
            targets = {
                p: f"{topo.bases[p]}/completions" for p in ("direct", "router", "bare proxy")
            }
            raw = await latency_rounds(
                {"targets": targets, "body": body, "rounds": 15, "warmup_rounds": 2}
            )
        per_path, added, _, errors = latency_figures(raw["targets"])
        assert errors == {"direct": 0, "router": 0, "bare proxy": 0}
        assert added["router"]["ttfb"]["p50"] > 19.0
        threshold = next(
            t for t in GateSpec.from_toml(SCENARIO_DIR / "ci.toml").thresholds if t.ratio == RATIO
        )
        check = threshold.check(latency_ratios(per_path))
        assert not check.passed, check.detail
