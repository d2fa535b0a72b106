"""How reports become candidates, and how one candidate is ranked."""

from __future__ import annotations

import random

from node_protocol.wire import LoadReport, ModelReport, Registration
from router.candidates import Candidate, candidate_for
from router.registry import Node, Registry
from router.scheduling import Scheduler


def _node(registry: Registry) -> Node:
    node, _ = registry.register("g", Registration(name="n", base_url="http://x"), 0.0)
    return node


def _report(seq: int, running: int, rate: float) -> LoadReport:
    models = (ModelReport("m", loaded=True, max_parallel=4),)
    return LoadReport(seq, 0.0, "vllm", "ok", running, models=models, queue_running=running,
                      output_tokens_per_s=rate)  # fmt: skip


class Watcher:
    """A view of one node that only counts what it is told."""

    def __init__(self) -> None:
        self.changed = self.heard = 0

    def node_changed(self, row: int) -> None:
        self.changed += 1

    def node_heard(self, row: int) -> None:
        self.heard += 1

    def counted(self, row: int, key: str, delta: int) -> None:
        pass


class TestReports:
    """A report is read once into the node's standing."""

    def test_an_idle_node_keeps_its_measured_speed(self) -> None:
        """A node that reports nothing running keeps the decode speed it was last measured at,
        instead of falling back to an unknown speed (the fleet's mean) while it idles."""
        registry = Registry("least_loaded", 3)
        node = _node(registry)
        registry.apply_report(node, _report(1, 2, 100.0), 0.0)
        busy = candidate_for(node, "m", 3, 0.5, 3.0)
        registry.apply_report(node, _report(2, 0, 0.0), 1.0)
        idle = candidate_for(node, "m", 3, 1.5, 3.0)
        assert busy is not None
        assert idle is not None
        assert busy.tok_s is not None
        assert idle.tok_s == busy.tok_s

    def test_a_repeated_report_only_refreshes_the_time(self) -> None:
        """The same report again tells the node's views that only its time moved; a report
        that says something new tells them the node changed."""
        registry = Registry("least_loaded", 3)
        node = _node(registry)
        registry.apply_report(node, _report(1, 2, 100.0), 0.0)
        watcher = Watcher()
        node.watchers.append((watcher, 0))
        report = node.report
        assert report is not None
        registry.apply_report(node, report, 1.0)
        assert (watcher.changed, watcher.heard) == (0, 1)
        assert node.load_read_at == 1.0
        registry.apply_report(node, _report(2, 3, 100.0), 2.0)
        assert watcher.changed >= 1


def _cand(load: float, own: int) -> Candidate:
    return Candidate("a", False, 1.0, True, load, 4, own, tok_s=30.0, cap=8)


class TestOneCandidate:
    """One candidate is ranked like many."""

    def test_a_single_candidate_queues_the_way_many_do(self) -> None:
        """Every slot of the only node busy, mostly with other routers' requests: the request
        queues at the node, which frees a slot sooner than this router's one request there
        would, as it does when the node has an equal twin, rather than waiting at the router."""
        alone = Scheduler(random.Random(1)).order("least_loaded", "k", [_cand(4, 1)])
        twin = Candidate("b", False, 1.0, True, 4, 4, 1, tok_s=30.0, cap=8)
        pair = Scheduler(random.Random(1)).order("least_loaded", "k", [_cand(4, 1), twin])
        assert alone == ["a"]
        assert pair != []
