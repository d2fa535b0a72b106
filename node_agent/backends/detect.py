"""Pick the adapter: by configuration, or by probing the backend (``backend_kind = "auto"``).

Probe order: ``GET /`` saying ``Ollama is running`` → ollama; ``GET /metrics`` with ``vllm:``
series, or ``/v1/models`` cards ``owned_by: "vllm"`` → vllm; anything else that answers →
openai. A backend that does not answer yet (vLLM keeps its port closed while loading) is probed
again on the next call, so the agent may start before its backend.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from .base import FETCH_ERRORS, Backend, BackendFacts, Health, control_headers, list_field
from .ollama import OllamaBackend
from .openai_generic import OpenAIBackend
from .vllm import VllmBackend

log = logging.getLogger("node_agent.backends.detect")

ADAPTERS: dict[str, type[Backend]] = {
    "ollama": OllamaBackend,
    "vllm": VllmBackend,
    "openai": OpenAIBackend,
}


class BackendUnreachableError(Exception):
    """The backend did not answer the detection probe at all."""


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
) -> tuple[int, str] | None:
    """(status, body) or None when nothing usable came back; raises when unreachable."""
    try:
        async with session.get(url, headers=headers, timeout=client_timeout) as resp:
            return resp.status, await resp.text(errors="replace")
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise BackendUnreachableError(str(exc) or type(exc).__name__) from exc
    except FETCH_ERRORS:
        return None


async def detect_kind(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 2.0,
) -> str:
    """The backend kind, or :class:`BackendUnreachableError` if it does not answer."""
    base = base_url.rstrip("/")
    headers = control_headers(api_key)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    root = await _get(session, base + "/", headers, timeout)
    if root is not None and root[0] == 200 and root[1].startswith("Ollama is running"):
        return "ollama"
    metrics, models = await asyncio.gather(
        _get(session, base + "/metrics", headers, timeout),
        _get(session, base + "/v1/models", headers, timeout),
    )
    if metrics is not None and metrics[0] == 200 and "vllm:" in metrics[1]:
        return "vllm"
    if models is not None and models[0] == 200:
        try:
            body = orjson.loads(models[1])
        except orjson.JSONDecodeError:
            body = None
        cards = list_field(body if isinstance(body, dict) else None, "data")
        if any(card.get("owned_by") == "vllm" for card in cards):
            return "vllm"
    return "openai"


class AutoBackend(Backend):
    """Detects the kind on first contact, then behaves as that kind's adapter."""

    health_path = "/"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 2.0,
        max_parallel: int | None = None,
    ) -> None:
        super().__init__(
            session, base_url, api_key=api_key, timeout_s=timeout_s, max_parallel=max_parallel
        )
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._resolved: Backend | None = None
        self._lock = asyncio.Lock()

    @property
    def kind(self) -> str:
        return "openai" if self._resolved is None else self._resolved.kind

    @property
    def loads_on_demand(self) -> bool:
        return True if self._resolved is None else self._resolved.loads_on_demand

    @property
    def resolved(self) -> Backend | None:
        return self._resolved

    async def resolve(self) -> Backend | None:
        """The detected adapter, probing the backend if not known yet (None if unreachable)."""
        if self._resolved is not None:
            return self._resolved
        async with self._lock:
            if self._resolved is None:
                try:
                    kind = await detect_kind(
                        self.session,
                        self.base_url,
                        api_key=self._api_key,
                        timeout_s=self._timeout_s,
                    )
                except BackendUnreachableError as exc:
                    log.debug("backend %s not reachable for detection: %s", self.base_url, exc)
                    return None
                log.info("detected backend %s as %s", self.base_url, kind)
                self._resolved = ADAPTERS[kind](
                    self.session,
                    self.base_url,
                    api_key=self._api_key,
                    timeout_s=self._timeout_s,
                    max_parallel=self.max_parallel,
                )
        return self._resolved

    async def health(self) -> Health:
        backend = await self.resolve()
        return "unhealthy" if backend is None else await backend.health()

    async def collect(self) -> BackendFacts:
        backend = await self.resolve()
        return BackendFacts() if backend is None else await backend.collect()


def make_backend(
    kind: str,
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 2.0,
    max_parallel: int | None = None,
) -> Backend:
    """The adapter for a configured kind (``auto`` detects lazily)."""
    cls: type[Backend] = AutoBackend if kind == "auto" else ADAPTERS[kind]
    return cls(session, base_url, api_key=api_key, timeout_s=timeout_s, max_parallel=max_parallel)
