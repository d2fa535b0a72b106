"""The agent <-> router wire contract: registration and the load report.

Defined once here as frozen dataclasses; the node agent imports them. ``to_json`` returns plain
JSON-ready dicts (camelCase keys, as the Octopus server-group API uses), ``from_json`` validates
a decoded body and raises :class:`WireError` with a message naming the bad field.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any

from .prompt_prefix import SCHEME, Fingerprint, cached_prefix_chars

BACKEND_KINDS = ("ollama", "vllm", "tgi", "triton", "lmstudio", "llamacpp", "openai")
HEALTH_VALUES = ("ok", "degraded", "unhealthy")
# An agent that cannot reach a router tries it again at least this often (its backoff's cap), so
# a router that comes back hears from every agent within about this long: a restarted router
# waits at least this (plus a report interval) before it says no node serves a model.
REJOIN_S = 1.0
# Behind several router replicas a router may believe a node has a free slot that another
# replica took since the last report. It then sends ``SLOT_CHECK_HEADER: N`` (the model's
# parallel slots): an agent that already has N or more requests in flight for the request's model
# (the one its body or path names, as the backend knows it; every request where the backend's
# models share its slots, as vLLM's adapters do) does not forward the request but answers 503 at
# once with ``NODE_BUSY_HEADER: <its in-flight count>`` (every model's, as
# ``LoadReport.in_flight``), and the router, now knowing the node is full, picks again or
# queues the request.
SLOT_CHECK_HEADER = "X-Router-Slot-Check"
NODE_BUSY_HEADER = "X-Node-Busy"
# The code (OpenAI ``error.code``, native ``error_type``) of the error an agent ends a stream
# with when its backend dropped or stalled mid-answer: the router takes it for a cut stream, not
# for the backend's own error, and may go on with the answer at another node.
STREAM_CUT_CODE = "backend_stream_cut"


class WireError(ValueError):
    """A registration or report body that does not follow the contract."""


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise WireError(f"{where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise WireError(f"{where}: field '{key}' must be a number")
    if not isinstance(value, kind):
        raise WireError(f"{where}: field '{key}' has the wrong type")
    return value


def _opt(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if obj.get(key) is None:
        return None
    return _field(obj, key, kind, where)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Registration:
    """``POST /api/server-groups/{group}/nodes`` body (the Octopus contract)."""

    name: str
    base_url: str
    health_url: str | None = None
    weight: float = 1.0
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "baseUrl": self.base_url,
            "healthUrl": self.health_url,
            "weight": self.weight,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Registration:
        obj = _obj(raw, "registration")
        name = _field(obj, "name", str, "registration").strip()
        if not name or len(name) > 128:
            raise WireError("registration: 'name' must be 1-128 characters")
        base_url = _field(obj, "baseUrl", str, "registration").rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise WireError("registration: 'baseUrl' must be an http(s) URL")
        health_url = _opt(obj, "healthUrl", str, "registration")
        weight = float(_opt(obj, "weight", (int, float), "registration") or 1.0)
        if not 0 < weight <= 1000:
            raise WireError("registration: 'weight' must be in (0, 1000]")
        metadata = _obj(obj.get("metadata") or {}, "registration.metadata")
        return cls(
            name=name,
            base_url=base_url,
            health_url=health_url,
            weight=weight,
            metadata={str(k): str(v) for k, v in metadata.items()},
        )


@dataclass(frozen=True, slots=True)
class GpuReport:
    """One GPU as NVML (or a fallback source) sees it."""

    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_pct: float | None = None

    @property
    def memory_free_bytes(self) -> int:
        return max(0, self.memory_total_bytes - self.memory_used_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "memoryTotalBytes": self.memory_total_bytes,
            "memoryUsedBytes": self.memory_used_bytes,
            "memoryFreeBytes": self.memory_free_bytes,
            "utilizationPct": self.utilization_pct,
        }

    @classmethod
    def from_json(cls, raw: Any) -> GpuReport:
        obj = _obj(raw, "gpu")
        return cls(
            index=_field(obj, "index", int, "gpu"),
            name=_field(obj, "name", str, "gpu"),
            memory_total_bytes=_field(obj, "memoryTotalBytes", int, "gpu"),
            memory_used_bytes=_field(obj, "memoryUsedBytes", int, "gpu"),
            utilization_pct=_opt(obj, "utilizationPct", (int, float), "gpu"),
        )


@dataclass(frozen=True, slots=True)
class ModelReport:
    """One model the backend can serve, loaded or not."""

    id: str
    loaded: bool
    aliases: tuple[str, ...] = ()
    vram_bytes: int = 0
    size_bytes: int | None = None
    max_parallel: int | None = None
    context_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "aliases": list(self.aliases),
            "loaded": self.loaded,
            "vramBytes": self.vram_bytes,
            "sizeBytes": self.size_bytes,
            "maxParallel": self.max_parallel,
            "contextLength": self.context_length,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ModelReport:
        obj = _obj(raw, "model")
        aliases = obj.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise WireError("model: 'aliases' must be a list of strings")
        max_parallel = _opt(obj, "maxParallel", int, "model")
        if max_parallel is not None and max_parallel < 1:
            raise WireError("model: 'maxParallel' must be at least 1")
        return cls(
            id=_field(obj, "id", str, "model"),
            loaded=_field(obj, "loaded", bool, "model"),
            aliases=tuple(aliases),
            vram_bytes=_opt(obj, "vramBytes", int, "model") or 0,
            size_bytes=_opt(obj, "sizeBytes", int, "model"),
            max_parallel=max_parallel,
            context_length=_opt(obj, "contextLength", int, "model"),
        )


# A report's prompt-cache summaries are bounded: so many models, so many hashes each.
MAX_PREFIX_MODELS = 64
MAX_PREFIX_HASHES = 4096


def pack_hashes(hashes: frozenset[int]) -> str:
    """64-bit hashes as base64 of their big-endian bytes, in ascending order."""
    ordered = sorted(hashes)
    return base64.b64encode(struct.pack(f">{len(ordered)}Q", *ordered)).decode()


def unpack_hashes(packed: str, where: str) -> frozenset[int]:
    if len(packed) > (MAX_PREFIX_HASHES * 8 + 2) // 3 * 4:
        raise WireError(f"{where}: more than {MAX_PREFIX_HASHES} hashes")
    try:
        raw = base64.b64decode(packed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{where}: 'hashes' is not base64") from exc
    if len(raw) % 8:
        raise WireError(f"{where}: 'hashes' must hold whole 8-byte hashes")
    return frozenset(struct.unpack(f">{len(raw) // 8}Q", raw))


@dataclass(frozen=True, slots=True)
class PrefixSummary:
    """What one model's prompt cache on the node likely holds, as the agent estimates it.

    ``hashes`` are prompt-prefix block hashes (``node_protocol.prompt_prefix``, under
    ``scheme``) of the prefixes most recently used there; ``capacity_chars`` and ``used_chars``
    size the agent's estimate of the cache; ``engine_cached_ratio`` is the share of prompt
    tokens the engine itself said it took from its cache, lately (None: it does not say).
    """

    model: str
    scheme: str
    hashes: frozenset[int]
    capacity_chars: int
    used_chars: int
    engine_cached_ratio: float | None = None

    def prefix_chars(self, fp: Fingerprint) -> int:
        """How many leading characters of the prompt the node likely holds (0 when the summary
        was made under another fingerprint scheme)."""
        return cached_prefix_chars(self.hashes, fp) if self.scheme == SCHEME else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scheme": self.scheme,
            "hashes": pack_hashes(self.hashes),
            "capacityChars": self.capacity_chars,
            "usedChars": self.used_chars,
            "engineCachedRatio": self.engine_cached_ratio,
        }

    @classmethod
    def from_json(cls, raw: Any) -> PrefixSummary:
        where = "prefixCache"
        obj = _obj(raw, where)
        capacity = _field(obj, "capacityChars", int, where)
        used = _field(obj, "usedChars", int, where)
        if capacity < 0 or used < 0:
            raise WireError(f"{where}: 'capacityChars' and 'usedChars' must not be negative")
        ratio = _opt(obj, "engineCachedRatio", (int, float), where)
        if ratio is not None and not 0 <= ratio <= 1:
            raise WireError(f"{where}: 'engineCachedRatio' must be in [0, 1]")
        return cls(
            model=_field(obj, "model", str, where),
            scheme=_field(obj, "scheme", str, where),
            hashes=unpack_hashes(_field(obj, "hashes", str, where), where),
            capacity_chars=capacity,
            used_chars=used,
            engine_cached_ratio=None if ratio is None else float(ratio),
        )


@dataclass(frozen=True, slots=True)
class LoadReport:
    """``PUT /api/server-groups/{group}/nodes/{nodeId}/report``: the agent's view of its node.

    ``queue_waiting`` / ``queue_running`` / ``kv_cache_usage`` are None when the backend does
    not expose them (None means unknown, never zero). ``prefix_caches`` summarises each
    model's prompt cache (optional: a report without it says nothing about the caches).
    ``prompt_tokens`` and ``cached_prompt_tokens`` are the engine's running totals of prompt
    tokens it computed and prompt tokens it took from its prompt cache (llama.cpp's counters),
    for a reader that compares two reports.
    """

    seq: int
    sent_at: float
    backend_kind: str
    backend_health: str
    in_flight: int
    models: tuple[ModelReport, ...] = ()
    gpus: tuple[GpuReport, ...] = ()
    backend_version: str | None = None
    queue_waiting: int | None = None
    queue_running: int | None = None
    kv_cache_usage: float | None = None
    output_tokens_per_s: float | None = None
    # the mean number of requests in flight over the interval the token rate was measured on
    # (what that rate is divided by for a per-stream speed); None from older agents
    mean_in_flight: float | None = None
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    draining: bool = False  # the node is being drained (told by any router replica)
    prefix_caches: tuple[PrefixSummary, ...] = ()

    def prefix_caches_by_name(self) -> dict[str, PrefixSummary]:
        """Each summary under its model's id and every alias the report lists for it."""
        found = {s.model: s for s in self.prefix_caches}
        for model in self.models:
            summary = found.get(model.id)
            if summary is not None:
                for alias in model.aliases:
                    found.setdefault(alias, summary)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "sentAt": self.sent_at,
            "backendKind": self.backend_kind,
            "backendVersion": self.backend_version,
            "backendHealth": self.backend_health,
            "inFlight": self.in_flight,
            "queueWaiting": self.queue_waiting,
            "queueRunning": self.queue_running,
            "kvCacheUsage": self.kv_cache_usage,
            "outputTokensPerS": self.output_tokens_per_s,
            "meanInFlight": self.mean_in_flight,
            "promptTokens": self.prompt_tokens,
            "cachedPromptTokens": self.cached_prompt_tokens,
            "draining": self.draining,
            "gpus": [g.to_json() for g in self.gpus],
            "models": [m.to_json() for m in self.models],
            "prefixCaches": [p.to_json() for p in self.prefix_caches],
        }

    @classmethod
    def from_json(cls, raw: Any) -> LoadReport:
        obj = _obj(raw, "report")
        kind = _field(obj, "backendKind", str, "report")
        if kind not in BACKEND_KINDS:
            raise WireError(f"report: 'backendKind' must be one of {', '.join(BACKEND_KINDS)}")
        health = _field(obj, "backendHealth", str, "report")
        if health not in HEALTH_VALUES:
            raise WireError(f"report: 'backendHealth' must be one of {', '.join(HEALTH_VALUES)}")
        gpus = obj.get("gpus") or []
        models = obj.get("models") or []
        if not isinstance(gpus, list) or not isinstance(models, list):
            raise WireError("report: 'gpus' and 'models' must be lists")
        prefix_caches = obj.get("prefixCaches") or []
        if not isinstance(prefix_caches, list) or len(prefix_caches) > MAX_PREFIX_MODELS:
            raise WireError(f"report: 'prefixCaches' must be a list of at most {MAX_PREFIX_MODELS}")
        in_flight = _field(obj, "inFlight", int, "report")
        if in_flight < 0:
            raise WireError("report: 'inFlight' must not be negative")
        return cls(
            seq=_field(obj, "seq", int, "report"),
            sent_at=float(_field(obj, "sentAt", (int, float), "report")),
            backend_kind=kind,
            backend_version=_opt(obj, "backendVersion", str, "report"),
            backend_health=health,
            in_flight=in_flight,
            queue_waiting=_opt(obj, "queueWaiting", int, "report"),
            queue_running=_opt(obj, "queueRunning", int, "report"),
            kv_cache_usage=_opt(obj, "kvCacheUsage", (int, float), "report"),
            output_tokens_per_s=_opt(obj, "outputTokensPerS", (int, float), "report"),
            mean_in_flight=_opt(obj, "meanInFlight", (int, float), "report"),
            prompt_tokens=_opt(obj, "promptTokens", int, "report"),
            cached_prompt_tokens=_opt(obj, "cachedPromptTokens", int, "report"),
            draining=bool(_opt(obj, "draining", bool, "report") or False),
            gpus=tuple(GpuReport.from_json(g) for g in gpus),
            models=tuple(ModelReport.from_json(m) for m in models),
            prefix_caches=tuple(PrefixSummary.from_json(p) for p in prefix_caches),
        )
