"""LM Studio: no health path and no metrics; load state from its own REST model lists.

Facts: health is ``GET /v1/models`` answering 200 (LM Studio answers
200 on unknown paths, so nothing else proves it is up). ``GET /api/v1/models`` (≥ 0.4.0) lists
every downloaded model by ``key`` with ``loaded_instances[]`` (loaded ⇔ non-empty; each
instance's ``config.parallel`` is its concurrent slots and ``config.context_length`` its
loaded context) and ``max_context_length``; older servers have ``GET /api/v0/models`` with
``state: "loaded" | "not-loaded"``, ``max_context_length`` and ``loaded_context_length``.
LM Studio loads models just in time, so a request can change the loaded set.
"""

from __future__ import annotations

from typing import Any

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, int_field, list_field, positive_int, str_field


def _config(instance: dict[str, Any]) -> dict[str, Any]:
    config = instance.get("config")
    return config if isinstance(config, dict) else {}


def models_from_v1(body: dict[str, Any], max_parallel: int | None) -> tuple[ModelReport, ...]:
    """``/api/v1/models``: slots are the sum of the loaded instances' ``parallel``."""
    reports = []
    for entry in list_field(body, "models"):
        key = str_field(entry, "key")
        if key is None:
            continue
        instances = list_field(entry, "loaded_instances")
        parallel = [positive_int(_config(i).get("parallel")) for i in instances]
        slots = sum(p for p in parallel if p) if instances and all(parallel) else None
        contexts = [positive_int(_config(i).get("context_length")) for i in instances]
        loaded_context = max((c for c in contexts if c), default=None)
        aliases = tuple(
            dict.fromkeys(i["id"] for i in instances if str_field(i, "id") and i["id"] != key)
        )
        reports.append(
            ModelReport(
                id=key,
                loaded=bool(instances),
                aliases=aliases,
                size_bytes=int_field(entry, "size_bytes"),
                max_parallel=max_parallel or slots,
                context_length=loaded_context or positive_int(entry.get("max_context_length")),
            )
        )
    return tuple(reports)


def models_from_v0(body: dict[str, Any], max_parallel: int | None) -> tuple[ModelReport, ...]:
    """``/api/v0/models``: ``state`` says loaded; no slot count."""
    reports = []
    for entry in list_field(body, "data"):
        model_id = str_field(entry, "id")
        if model_id is None:
            continue
        loaded = entry.get("state") == "loaded"
        context = positive_int(entry.get("loaded_context_length")) if loaded else None
        reports.append(
            ModelReport(
                id=model_id,
                loaded=loaded,
                max_parallel=max_parallel,
                context_length=context or positive_int(entry.get("max_context_length")),
            )
        )
    return tuple(reports)


def is_v1_listing(body: Any) -> bool:
    """An ``/api/v1/models`` answer (not LM Studio's 200-for-anything on older builds)."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return False
    entries = list_field(body, "models")
    return not entries or any("loaded_instances" in e for e in entries)


def is_v0_listing(body: Any) -> bool:
    """An ``/api/v0/models`` answer: a list object whose entries carry ``state``."""
    if not isinstance(body, dict) or body.get("object") != "list":
        return False
    entries = list_field(body, "data")
    return bool(entries) and any("state" in e for e in entries)


class LmStudioBackend(Backend):
    """LM Studio's server: JIT loading, load state from the REST API, no queue signals."""

    KIND = "lmstudio"
    LOADS_ON_DEMAND = True
    SLOTS_PER_MODEL = True
    health_path = "/v1/models"

    async def collect(self) -> BackendFacts:
        v1 = await self.get_json("/api/v1/models")
        if v1 is not None and is_v1_listing(v1):
            return BackendFacts(models=models_from_v1(v1, self.max_parallel))
        v0 = await self.get_json("/api/v0/models")
        if v0 is not None and is_v0_listing(v0):
            return BackendFacts(models=models_from_v0(v0, self.max_parallel))
        return BackendFacts()
