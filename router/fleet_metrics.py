"""Node, GPU and model gauges for ``/metrics``, read from the registry at scrape time.

These are the bulk of a scrape (a few lines per node and GPU: 1,400 lines at 100 nodes), and
prometheus_client's generic exposition spends ~8 ms on them; this writes the same text format
directly (label values escaped as the format requires; the test suite parses it with
prometheus_client's parser), with each node's label prefix built once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router.registry import NodeState, Registry

FAMILIES = (
    ("router_node_state", "1 for the node's current state, else 0."),
    ("router_node_slots_in_use", "Requests this router has in flight on the node."),
    ("router_node_reported_in_flight", "Requests in flight the agent last reported."),
    ("router_node_queue_waiting", "Requests waiting in the backend's queue."),
    ("router_node_report_age_seconds", "Age of the node's last load report."),
    ("router_node_breaker_open", "1 while the node's circuit breaker keeps requests away."),
    ("router_gpu_memory_total_bytes", "GPU memory."),
    ("router_gpu_memory_used_bytes", "GPU memory in use."),
    ("router_node_model_loaded", "1 if the model is loaded on the node, else 0."),
    (
        "router_node_engine_cached_ratio",
        "Share of prompt tokens the engine said it took from its prompt cache, lately.",
    ),
)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class FleetMetrics:
    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._clock = clock
        self._prefixes: dict[tuple[str, str], str] = {}

    def _prefix(self, group: str, node: str) -> str:
        key = (group, node)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) > 100_000:
                self._prefixes.clear()
            prefix = self._prefixes[key] = f'group="{escape(group)}",node="{escape(node)}"'
        return prefix

    def render(self) -> bytes:
        out: dict[str, list[str]] = {name: [] for name, _ in FAMILIES}
        state, slots = out["router_node_state"], out["router_node_slots_in_use"]
        reported, queue = out["router_node_reported_in_flight"], out["router_node_queue_waiting"]
        age, breaker = out["router_node_report_age_seconds"], out["router_node_breaker_open"]
        total, used = out["router_gpu_memory_total_bytes"], out["router_gpu_memory_used_bytes"]
        loaded, cached = out["router_node_model_loaded"], out["router_node_engine_cached_ratio"]
        threshold = self._registry.threshold
        now = self._clock()
        for group in self._registry.groups.values():
            for node in group.nodes.values():
                ids = self._prefix(group.name, node.name)
                current = node.state(threshold)
                for s in NodeState:
                    state.append(f'router_node_state{{{ids},state="{s.value}"}} '
                                 f"{1 if s is current else 0}\n")  # fmt: skip
                slots.append(f"router_node_slots_in_use{{{ids}}} {node.in_flight}\n")
                breaker.append(
                    f"router_node_breaker_open{{{ids}}} {int(not node.breaker_allows(now))}\n"
                )
                if node.report_received_at is not None:
                    age.append(
                        f"router_node_report_age_seconds{{{ids}}} {now - node.report_received_at}\n"
                    )
                report = node.report
                if report is None:
                    continue
                reported.append(f"router_node_reported_in_flight{{{ids}}} {report.in_flight}\n")
                if report.queue_waiting is not None:
                    queue.append(f"router_node_queue_waiting{{{ids}}} {report.queue_waiting}\n")
                for gpu in report.gpus:
                    gpu_ids = f'{ids},gpu="{gpu.index}",gpu_name="{escape(gpu.name)}"'
                    total.append(f"router_gpu_memory_total_bytes{{{gpu_ids}}} "
                                 f"{gpu.memory_total_bytes}\n")  # fmt: skip
                    used.append(f"router_gpu_memory_used_bytes{{{gpu_ids}}} "
                                f"{gpu.memory_used_bytes}\n")  # fmt: skip
                for m in report.models:
                    loaded.append(f'router_node_model_loaded{{{ids},model="{escape(m.id)}"}} '
                                  f"{1 if m.loaded else 0}\n")  # fmt: skip
                for summary in report.prefix_caches:  # only engines that count cached tokens
                    if summary.engine_cached_ratio is not None:
                        cached.append(f"router_node_engine_cached_ratio{{{ids},"
                                      f'model="{escape(summary.model)}"}} '
                                      f"{summary.engine_cached_ratio}\n")  # fmt: skip
        parts = []
        for name, help_text in FAMILIES:
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(out[name])
        return "".join(parts).encode()
