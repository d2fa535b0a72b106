"""Any other OpenAI-compatible server (llama-cpp-python's, ...): ``/v1/models`` is all we know.

There is no health path to rely on (LM Studio answers 200 on unknown paths), so health is
``GET /v1/models``; every listed model is taken as loaded.

Nor can the server's parallelism be learned, and guessing high is unsafe: llama-cpp-python's
server, for one, cuts its running request short (an empty or partial stream, no error) whenever
another arrives. So unless ``--max-parallel`` says otherwise, one request at a time is assumed and
reported (the router queues the rest), the agent says so when it starts, and the agent itself
never has more than that many requests at the backend (a router may still send one more to wait
at the node). Its own ``GET /v1/models`` counts as an arrival there too, so the backend is not
probed while it serves.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, int_field, list_field, str_field

ASSUMED_PARALLEL = 1

log = logging.getLogger("node_agent.backends.openai_generic")


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
    GATED = True
    health_path = "/v1/models"

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
            max_parallel=max_parallel or ASSUMED_PARALLEL,
            metrics_url=metrics_url,
        )
        if max_parallel is None:
            log.warning(
                "backend %s is a generic OpenAI-compatible server whose parallelism cannot be "
                "learned: assuming it serves %d request at a time (the router queues the rest). "
                "If it serves more, start the agent with --max-parallel N "
                "(or NODE_AGENT_MAX_PARALLEL=N).",
                self.base_url,
                ASSUMED_PARALLEL,
            )

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
