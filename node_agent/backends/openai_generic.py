"""Any other OpenAI-compatible server (llama.cpp, LM Studio, ...): ``/v1/models`` is all we know.

There is no health path to rely on (LM Studio answers 200 on unknown paths), so health is
``GET /v1/models``; every listed model is taken as loaded.
"""

from __future__ import annotations

from typing import Any

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, int_field, list_field, str_field


def _context_length(card: dict[str, Any]) -> int | None:
    for key in ("max_model_len", "context_length", "max_context_length"):
        value = int_field(card, key)
        if value is not None:
            return value
    return None


def _size(card: dict[str, Any]) -> int | None:
    meta = card.get("meta")
    return int_field(meta, "size") if isinstance(meta, dict) else None


class OpenAIBackend(Backend):
    """A generic OpenAI-compatible backend."""

    KIND = "openai"
    LOADS_ON_DEMAND = True
    health_path = "/v1/models"

    async def collect(self) -> BackendFacts:
        body = await self.get_json("/v1/models")
        models = []
        for card in list_field(body, "data"):
            model_id = str_field(card, "id")
            if model_id is not None:
                models.append(
                    ModelReport(
                        id=model_id,
                        loaded=True,
                        size_bytes=_size(card),
                        max_parallel=self.max_parallel,
                        context_length=_context_length(card),
                    )
                )
        return BackendFacts(models=tuple(models))
