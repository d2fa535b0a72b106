"""`make run`'s launcher: the demo spec starts as separate processes and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bench.cluster import ClusterSpec, launch

DEMO = Path(__file__).resolve().parents[2] / "bench" / "clusters" / "demo.toml"


class TestDemoCluster:
    """The demo cluster serves the group endpoint with every node healthy."""

    async def test_demo_spec_runs_and_stops(self) -> None:
        """Router, three emulators and three agents come up as processes; a chat succeeds;
        on exit every process ends and the agents deregister first."""
        spec = ClusterSpec.from_toml(DEMO, router_port=0)
        assert spec.group == "inference-cluster"
        assert [n.name for n in spec.nodes] == ["gpu-box-1", "gpu-box-2", "gpu-box-3"]
        async with launch(spec) as cluster, aiohttp.ClientSession() as session:
            async with session.get(f"{cluster.base_url}/models") as resp:
                ids = {m["id"] for m in (await resp.json())["data"]}
            assert {"llama3.1:8b", "llama2:13b", "llama3.1:70b"} <= ids
            body = {
                "model": "llama3.1:70b",
                "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hello"}],
            }
            async with session.post(f"{cluster.base_url}/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["X-Inference-Node"] == "gpu-box-3"
            processes = [cluster.router, *cluster.emulators.values(), *cluster.agents.values()]
        assert all(p.proc.returncode == 0 for p in processes)
