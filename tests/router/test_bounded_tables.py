"""Every table keyed by what the outside sends stays bounded: LRU where forgetting is safe
(rate-limit buckets, rotations, idle queues), folding for metric labels, a hard cap with a
clear refusal for nodes and groups."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from node_protocol.wire import Registration
from router.admission import Admission, AdmissionLimits
from router.app import RunningRouter
from router.bounded import LabelCap, LruDict
from router.errors import RateLimited
from router.limits import MAX_TENANTS_TRACKED, TenantRateLimiter
from router.metrics import MAX_MODELS, RouterMetrics
from router.records import RequestRecord
from router.registry import MAX_GROUPS, Registry, RegistryFull
from router.scheduling import MAX_ROTATIONS, Candidate, Scheduler
from tests.fakes import report

# An operation on an LruDict: ("get", key) or ("set", key).
Ops = st.lists(st.tuples(st.sampled_from(["get", "set"]), st.integers(0, 20)), max_size=200)


class TestLruDict:
    """The shared LRU: at most ``limit`` entries, the least recently used one goes first."""

    def test_a_read_keeps_an_entry_and_the_least_recent_goes(self) -> None:
        """After a, b, c and a read of a, a new key pushes out b, not a."""
        table: LruDict[str, int] = LruDict(3)
        for i, key in enumerate("abc"):
            table[key] = i
        assert table.get("a") == 0
        table["d"] = 3
        assert "b" not in table
        assert [k for k in table] == ["c", "a", "d"]

    @given(limit=st.integers(1, 8), ops=Ops)
    def test_behaves_as_a_reference_lru(self, limit: int, ops: list[tuple[str, int]]) -> None:
        """Under any mix of reads and writes it holds what a reference LRU holds, in order."""
        table: LruDict[int, int] = LruDict(limit)
        model: OrderedDict[int, int] = OrderedDict()
        for step, (op, key) in enumerate(ops):
            if op == "get":
                assert table.get(key) == model.get(key)
                if key in model:
                    model.move_to_end(key)
            else:
                table[key] = step
                model[key] = step
                model.move_to_end(key)
                if len(model) > limit:
                    model.popitem(last=False)
            assert len(table) <= limit
        assert list(table) == list(model)


def test_label_cap_folds_new_values_into_other() -> None:
    """The first ``limit`` values keep their names (also when seen again); the rest are other."""
    cap = LabelCap(3)
    assert [cap(v) for v in ["a", "b", "a", "c", "d", "b", "e"]] == [
        "a",
        "b",
        "a",
        "c",
        "other",
        "b",
        "other",
    ]
    assert len(cap) == 3


def test_a_limited_tenant_stays_limited_while_many_others_come_and_go() -> None:
    """A flood of new tenant ids (past the tracked bound) pushes out idle tenants' buckets, not
    the bucket of a tenant still sending, which stays drained."""
    limiter = TenantRateLimiter(requests_per_minute=1, tokens_per_minute=0)
    now = 1000.0
    limiter.admit("heavy", now)
    with pytest.raises(RateLimited):
        limiter.admit("heavy", now)
    for i in range(MAX_TENANTS_TRACKED + 10):
        limiter.admit(f"tenant-{i}", now)
        if i % 1000 == 0:
            with pytest.raises(RateLimited):
                limiter.admit("heavy", now)
    with pytest.raises(RateLimited):
        limiter.admit("heavy", now)


class _Slot:
    def release(self) -> None:
        pass


async def test_admission_keeps_a_bounded_number_of_idle_queues() -> None:
    """Requests under ever new queue keys leave at most ``max_queues`` queues behind; a queue
    with a request in service is never dropped (its release still finds it)."""
    admission = Admission(AdmissionLimits(), time.monotonic)
    held = await admission.admit("group/held", "t", _Slot)
    keys = 2 * AdmissionLimits().max_queues
    for i in range(keys):
        ticket = await admission.admit(f"group/model-{i}", f"tenant-{i}", _Slot)
        ticket.release()
        assert len(admission.queue_lengths()) <= AdmissionLimits().max_queues
    assert "group/held" in admission.queue_lengths()
    held.release()


def _candidate(node_id: str) -> Candidate:
    return Candidate(
        node_id=node_id, degraded=False, weight=1.0, loaded=True, load=0.0, slots=4, own_in_flight=0
    )


def test_round_robin_state_is_bounded_and_a_busy_rotation_keeps_turning() -> None:
    """Rotations under ever new keys stay at most MAX_ROTATIONS; the key in use keeps its turn."""
    scheduler = Scheduler()
    pair = [_candidate("n1"), _candidate("n2")]
    firsts = []
    for i in range(MAX_ROTATIONS + 500):
        scheduler.order("round_robin", f"group/model-{i}", pair)
        firsts.append(scheduler.order("round_robin", "group/hot", pair)[0])
    assert len(scheduler._rotation) <= MAX_ROTATIONS
    assert firsts[:4] == ["n1", "n2", "n1", "n2"]
    assert firsts[-2:] in (["n1", "n2"], ["n2", "n1"])


def test_model_labels_fold_into_other_past_the_cap() -> None:
    """Metric series per model stop growing after MAX_MODELS distinct models."""
    metrics = RouterMetrics(CollectorRegistry())
    for i in range(MAX_MODELS + 50):
        record = RequestRecord("g", f"model-{i}", "/v1/chat/completions", None, "c", status=200)
        record.t_end = record.t_start
        metrics.observe(record)
    models = {key[1] for key in metrics.duration.series}
    assert len(models) == MAX_MODELS + 1
    assert "other" in models


class TestRegistryCaps:
    """Nodes per group and groups made by registrations are capped; config is not counted."""

    def test_nodes_per_group_and_groups_are_capped(self) -> None:
        """Past the caps a registration raises RegistryFull (and creates nothing); known nodes
        re-register, and static nodes and declared groups are not counted."""
        registry = Registry("least_loaded", 3, max_groups=2, max_nodes_per_group=2)
        registry.ensure_group("declared").declared = True
        for name in ("a", "b"):
            registry.register("g1", Registration(name=name, base_url="http://x:1"), 0.0)
        registry.register("g1", Registration(name="s", base_url="http://x:1"), 0.0, static=True)
        with pytest.raises(RegistryFull) as full:
            registry.register("g1", Registration(name="c", base_url="http://x:1"), 0.0)
        assert full.value.code == "too_many_nodes"
        assert (
            registry.register("g1", Registration(name="a", base_url="http://x:2"), 1.0)[1] is False
        )
        registry.register("g2", Registration(name="a", base_url="http://x:1"), 0.0)
        with pytest.raises(RegistryFull) as full:
            registry.register("g3", Registration(name="a", base_url="http://x:1"), 0.0)
        assert full.value.code == "too_many_groups"
        assert "g3" not in registry.groups
        registry.register("declared", Registration(name="a", base_url="http://x:1"), 0.0)

    async def test_registration_past_the_group_cap_is_403_in_the_envelope(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """The router takes MAX_GROUPS groups from registrations; the next one is refused 403
        with code too_many_groups, while the configured group still takes nodes."""

        def body(name: str) -> dict[str, Any]:
            return {"name": name, "baseUrl": "http://10.0.0.1:8090", "report": report(("m",))}

        base = router.url + "/api/server-groups"
        for i in range(MAX_GROUPS):
            async with session.post(f"{base}/g{i}/nodes", json=body("n")) as resp:
                assert resp.status == 201
        async with session.post(f"{base}/one-more/nodes", json=body("n")) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
        assert error["code"] == "too_many_groups"
        assert error["type"] == "permission_error"
        async with session.post(f"{base}/inference-cluster/nodes", json=body("n")) as resp:
            assert resp.status == 201
