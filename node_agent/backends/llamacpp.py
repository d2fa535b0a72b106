"""llama.cpp's own server (``llama-server``): one model, a fixed number of slots.

``GET /health`` answers 200 once the model is loaded (503 while loading). ``GET /props`` gives
``total_slots`` (``--parallel``: the requests it decodes together; more wait inside the server)
and ``default_generation_settings.n_ctx``, one slot's context (``-c`` divided by the slots), the
longest prompt a request may bring. ``GET /metrics`` (with ``--metrics``) has
``requests_processing`` and ``requests_deferred`` and the prompt-cache counters; without it,
``GET /slots`` still tells how many slots are working. ``/v1/models`` lists the one model under
its ``--alias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, decode_json, list_field, positive_int, str_field
from .prometheus_text import parse_gauges

PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"
CACHED_TOKENS = "llamacpp:prompt_tokens_cached_total"
_SERIES = (PROCESSING, DEFERRED, PROMPT_TOKENS, CACHED_TOKENS)


@dataclass(frozen=True, slots=True)
class ServerStats:
    """One ``/metrics`` scrape: the queue and the prompt-cache counters."""

    processing: int | None = None
    deferred: int | None = None
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None

    @classmethod
    def from_scrape(cls, text: str) -> ServerStats:
        scrape = parse_gauges(text, _SERIES)

        def count(name: str) -> int | None:
            value = scrape.total(name)
            return None if value is None else round(value)

        return cls(
            processing=count(PROCESSING),
            deferred=count(DEFERRED),
            prompt_tokens=count(PROMPT_TOKENS),
            cached_prompt_tokens=count(CACHED_TOKENS),
        )

    @classmethod
    def from_slots(cls, slots: Any) -> ServerStats:
        """Without ``--metrics``: the working slots, from ``GET /slots`` (no queue depth)."""
        if not isinstance(slots, list):
            return cls()
        busy = sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing") is True)
        return cls(processing=busy)


def slot_context(props: dict[str, Any] | None) -> int | None:
    """One slot's context length: the prompt limit of a single request."""
    if props is None:
        return None
    settings = props.get("default_generation_settings")
    return positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None


def model_from(
    props: dict[str, Any] | None, models: dict[str, Any] | None, max_parallel: int | None
) -> ModelReport | None:
    """The server's one model: its name from ``/v1/models`` (else the alias in ``/props``),
    its slots as the parallel requests unless configured, one slot's context."""
    cards = list_field(models, "data")
    card = cards[0] if cards else {}
    name = str_field(card, "id") or (None if props is None else str_field(props, "model_alias"))
    if name is None:
        return None
    names = card.get("aliases")
    aliases = tuple(a for a in names if isinstance(a, str) and a != name) if names else ()
    meta = card.get("meta")
    context = slot_context(props) or (
        positive_int(meta.get("n_ctx")) if isinstance(meta, dict) else None
    )
    slots = None if props is None else positive_int(props.get("total_slots"))
    return ModelReport(
        id=name,
        loaded=True,
        aliases=aliases,
        size_bytes=positive_int(meta.get("size")) if isinstance(meta, dict) else None,
        max_parallel=max_parallel or slots,
        context_length=context,
    )


class LlamaCppBackend(Backend):
    """``llama-server``: slots from ``/props``, queue and cache counters from ``/metrics``."""

    KIND = "llamacpp"
    health_path = "/health"

    async def collect(self) -> BackendFacts:
        # One after another, over one kept connection: llama-server serves each connection on
        # one of its few HTTP threads (parallel + 2 on a small machine), held while it idles,
        # so reads side by side would take threads the clients' requests need.
        props = await self.get_json("/props")
        models = await self.get_json("/v1/models")
        metrics_text = await self.get_text(self.metrics_url)
        if metrics_text is not None:
            stats = ServerStats.from_scrape(metrics_text)
        else:
            stats = ServerStats.from_slots(await self._slots())
        model = model_from(props, models, self.max_parallel)
        return BackendFacts(
            models=() if model is None else (model,),
            version=None if props is None else str_field(props, "build_info"),
            queue_waiting=stats.deferred,
            queue_running=stats.processing,
            prompt_tokens=stats.prompt_tokens,
            cached_prompt_tokens=stats.cached_prompt_tokens,
        )

    async def _slots(self) -> Any:
        return decode_json(await self.get_text("/slots"))
