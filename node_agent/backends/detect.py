"""Pick the adapter: by configuration, or by probing the backend (``backend_kind = "auto"``).

Probes, in this order of proof:

1. ``GET /`` saying ``Ollama is running`` → ollama; answered with ``Server: llama.cpp`` →
   llamacpp (llama-server sends that header on every answer).
2. At once: ``GET /props`` with ``total_slots`` and ``default_generation_settings`` → llamacpp
   (the header may be lost behind a proxy); ``GET /info`` with ``model_id`` and
   ``max_concurrent_requests`` → tgi;
   ``GET /v2/health/ready`` answering 200 or 400 and then ``POST /v2/repository/index``
   answering a JSON array → triton; ``GET /api/v1/models`` with ``loaded_instances`` or
   ``GET /api/v0/models`` with ``state`` → lmstudio.
3. ``GET /metrics`` with ``vllm:`` series, or ``/v1/models`` cards ``owned_by: "vllm"`` → vllm.
4. Anything else that answers → openai.

Every check needs a structured answer, never a bare 200: LM Studio answers 200 on unknown paths.
A backend that does not answer yet (vLLM and TGI keep their port closed while loading) is probed
again on the next call, so the agent may start before its backend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

import aiohttp
import orjson

from .base import FETCH_ERRORS, Backend, BackendFacts, Health, control_headers, list_field
from .llamacpp import LlamaCppBackend
from .lmstudio import LmStudioBackend, is_v0_listing, is_v1_listing
from .ollama import OllamaBackend
from .openai_generic import OpenAIBackend
from .tgi import TgiBackend
from .triton import TritonBackend
from .vllm import VllmBackend

log = logging.getLogger("node_agent.backends.detect")

ADAPTERS: dict[str, type[Backend]] = {
    "ollama": OllamaBackend,
    "vllm": VllmBackend,
    "tgi": TgiBackend,
    "triton": TritonBackend,
    "lmstudio": LmStudioBackend,
    "llamacpp": LlamaCppBackend,
    "openai": OpenAIBackend,
}


class BackendUnreachableError(Exception):
    """The backend did not answer the detection probe at all."""


class Reply(NamedTuple):
    status: int
    body: str
    server: str  # the Server header ('' when absent)


Answer = Reply | None
LLAMACPP_SERVER = "llama.cpp"


def _json(answer: Answer) -> Any:
    """The JSON body of a 200 answer, else None."""
    if answer is None or answer.status != 200:
        return None
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None


def is_llamacpp_props(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and "total_slots" in body
        and isinstance(body.get("default_generation_settings"), dict)
    )


def is_tgi_info(body: Any) -> bool:
    return isinstance(body, dict) and "model_id" in body and "max_concurrent_requests" in body


def is_vllm(metrics: Answer, models: Answer) -> bool:
    if metrics is not None and metrics.status == 200 and "vllm:" in metrics.body:
        return True
    body = _json(models)
    cards = list_field(body if isinstance(body, dict) else None, "data")
    return any(card.get("owned_by") == "vllm" for card in cards)


class _Prober:
    """One detection pass: requests against the backend with the control timeout."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str | None, timeout_s: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = control_headers(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def call(self, method: str, path: str, *, strict: bool = False) -> Answer:
        """The answer, or None when nothing usable came back.

        ``strict``: raise :class:`BackendUnreachableError` when the backend cannot be reached.
        """
        try:
            async with self._session.request(
                method, self._base + path, headers=self._headers, timeout=self._timeout
            ) as resp:
                body = await resp.text(errors="replace")
                return Reply(resp.status, body, resp.headers.get("Server", ""))
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            if strict:
                raise BackendUnreachableError(str(exc) or type(exc).__name__) from exc
            return None
        except FETCH_ERRORS:
            return None

    async def is_triton(self, ready: Answer) -> bool:
        if ready is None or ready.status not in (200, 400):
            return False
        return isinstance(_json(await self.call("POST", "/v2/repository/index")), list)


async def detect_kind(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 2.0,
) -> str:
    """The backend kind, or :class:`BackendUnreachableError` if it does not answer."""
    probe = _Prober(session, base_url, api_key, timeout_s)
    root = await probe.call("GET", "/", strict=True)
    if root is not None and root.status == 200 and root.body.startswith("Ollama is running"):
        return "ollama"
    if root is not None and root.server.startswith(LLAMACPP_SERVER):
        return "llamacpp"
    props, info, ready, lms_v1, lms_v0 = await asyncio.gather(
        probe.call("GET", "/props"),
        probe.call("GET", "/info"),
        probe.call("GET", "/v2/health/ready"),
        probe.call("GET", "/api/v1/models"),
        probe.call("GET", "/api/v0/models"),
    )
    if is_llamacpp_props(_json(props)):
        return "llamacpp"
    if is_tgi_info(_json(info)):
        return "tgi"
    if await probe.is_triton(ready):
        return "triton"
    if is_v1_listing(_json(lms_v1)) or is_v0_listing(_json(lms_v0)):
        return "lmstudio"
    metrics, models = await asyncio.gather(
        probe.call("GET", "/metrics"), probe.call("GET", "/v1/models")
    )
    return "vllm" if is_vllm(metrics, models) else "openai"


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
        metrics_url: str | None = None,
    ) -> None:
        super().__init__(
            session,
            base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_parallel=max_parallel,
            metrics_url=metrics_url,
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
    def slots_per_model(self) -> bool:
        return False if self._resolved is None else self._resolved.slots_per_model

    @property
    def concurrency_limit(self) -> int | None:
        return None if self._resolved is None else self._resolved.concurrency_limit

    @property
    def resolved(self) -> Backend | None:
        return self._resolved

    async def resolved_kind(self) -> str | None:
        backend = await self.resolve()
        return None if backend is None else backend.kind

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
                    metrics_url=self._metrics_url,
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
    metrics_url: str | None = None,
) -> Backend:
    """The adapter for a configured kind (``auto`` detects lazily)."""
    cls: type[Backend] = AutoBackend if kind == "auto" else ADAPTERS[kind]
    return cls(
        session,
        base_url,
        api_key=api_key,
        timeout_s=timeout_s,
        max_parallel=max_parallel,
        metrics_url=metrics_url,
    )
