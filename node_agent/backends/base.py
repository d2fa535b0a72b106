"""What every backend adapter offers, and the HTTP helpers they share.

An adapter answers two questions about the backend beside the agent: is it healthy
(:meth:`Backend.health`, Octopus's semantics, refined per kind by :meth:`Backend.judge`) and
what does it hold and how busy is it (:meth:`Backend.collect`). A fact the backend does not
expose is None (unknown), never 0.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
import orjson

from node_protocol.wire import GpuReport, ModelReport

Health = Literal["ok", "degraded", "unhealthy"]

log = logging.getLogger("node_agent.backends")

# Errors that mean "the backend did not give a usable answer" on a control call.
FETCH_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError, UnicodeDecodeError)


@dataclass(frozen=True, slots=True)
class BackendFacts:
    """The per-backend part of a load report."""

    models: tuple[ModelReport, ...] = ()
    version: str | None = None
    queue_waiting: int | None = None
    queue_running: int | None = None
    kv_cache_usage: float | None = None
    # The engine's running totals of prompt tokens computed and taken from its prompt cache.
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    # GPUs as the backend itself reports them (Triton's DCGM gauges): used when NVML is absent.
    gpus: tuple[GpuReport, ...] = ()
    # The tokens the engine's KV cache holds in all (vLLM: GPU blocks x block size).
    kv_capacity_tokens: int | None = None


def control_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Backend(ABC):
    """One backend kind's adapter, bound to a backend URL and a control session."""

    KIND: ClassVar[str] = "openai"
    health_path: ClassVar[str] = "/health"
    # True when a request can change which models are loaded (Ollama, LM Studio JIT): the
    # reporter then re-checks the loaded set as requests finish, not only at its next tick.
    LOADS_ON_DEMAND: ClassVar[bool] = False
    # True when each model has parallel slots of its own (Ollama, LM Studio, Triton); else one
    # engine's slots serve every model it lists (vLLM's LoRA adapters share the base's).
    SLOTS_PER_MODEL: ClassVar[bool] = False
    # True when any request beyond the ones it serves can harm those (a server that cuts its
    # running request short whenever another arrives, a probe included): the agent then holds
    # requests beyond max_parallel until one ends, and does not probe while any is in flight.
    GATED: ClassVar[bool] = False

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 2.0,
        max_parallel: int | None = None,
        metrics_url: str | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.max_parallel = max_parallel
        self._metrics_url = metrics_url
        self._headers = control_headers(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @property
    def kind(self) -> str:
        """The wire name of the backend kind (``node_protocol.wire.BACKEND_KINDS``)."""
        return self.KIND

    @property
    def loads_on_demand(self) -> bool:
        return self.LOADS_ON_DEMAND

    @property
    def slots_per_model(self) -> bool:
        return self.SLOTS_PER_MODEL

    @property
    def concurrency_limit(self) -> int | None:
        """How many requests the agent may have at the backend at once (None: no limit)."""
        return self.max_parallel if self.GATED else None

    @property
    def metrics_url(self) -> str:
        """Where the backend's Prometheus text is: the setting, else ``/metrics`` beside it."""
        return self._metrics_url or self.base_url + "/metrics"

    async def resolved_kind(self) -> str | None:
        """The backend's kind, once known (auto-detection may not have reached it yet)."""
        return self.kind

    async def health(self) -> Health:
        """200-299 → ok, any other status → degraded, no answer → unhealthy (the seed)."""
        return await self.probe(self.health_path)

    def judge(self, status: int, body: bytes) -> Health:
        """The health a probe's answer means; kinds with a richer answer override this."""
        return "ok" if 200 <= status < 300 else "degraded"

    async def probe(self, path: str) -> Health:
        try:
            async with self.session.get(
                self.base_url + path, headers=self._headers, timeout=self._timeout
            ) as resp:
                body = await resp.read()
                return self.judge(resp.status, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("backend %s%s unreachable: %r", self.base_url, path, exc)
            return "unhealthy"

    @abstractmethod
    async def collect(self) -> BackendFacts:
        """Models, queue and cache signals; parts that fail are left unknown."""

    async def get_text(self, path: str) -> str | None:
        """GET a path (or an absolute URL) and return its body, or None on any failure or
        non-2xx status."""
        return await self.fetch("GET", path)

    async def fetch(self, method: str, path: str, body: bytes | None = None) -> str | None:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        headers = self._headers
        if body is not None:
            headers = headers | {"Content-Type": "application/json"}
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status // 100 != 2:
                    log.debug("backend %s answered %s", url, resp.status)
                    return None
                return await resp.text()
        except FETCH_ERRORS as exc:
            log.debug("backend %s failed: %r", url, exc)
            return None

    async def get_json(self, path: str) -> dict[str, Any] | None:
        """GET a path and decode a JSON object, or None on any failure."""
        value = decode_json(await self.get_text(path))
        return value if isinstance(value, dict) else None


def decode_json(text: str | None) -> Any:
    """The decoded JSON value, or None when there is no text or it is not JSON."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        log.debug("backend sent invalid JSON")
        return None


def str_field(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def int_field(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_field(obj: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """The dict entries of a JSON list field, ignoring anything malformed."""
    if obj is None:
        return []
    value = obj.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def positive_int(value: Any) -> int | None:
    """A JSON integer above 0, else None (absent, malformed, or a 0 meaning 'not set')."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
