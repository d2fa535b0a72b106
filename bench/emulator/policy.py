"""What each backend kind does with models and queues, as one value the engine reads.

- vllm, tgi, llamacpp: one model, loaded at start, never unloaded. Overload: vLLM queues
  without bound (a cap is opt-in, ``--max-num-queued-reqs``); TGI refuses beyond 128 requests
  in flight; llama-server defers every request beyond its slots, without bound.
- ollama: loads on demand, evicts any idle model (least recently used first), unloads after
  ``keep_alive`` (5 min); refuses beyond 512 waiting.
- lmstudio: loads on demand (JIT) or through its API; evicts only idle JIT-loaded models,
  keeping at most one (auto-evict); JIT models unload after their TTL (60 min). No overload
  answer.
- triton: loads and unloads only through its API; a load that does not fit fails; a per-model
  queue cap (``max_queue_size``) is opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

QueueScope = Literal["box", "model", "in_flight"]
Eviction = Literal["lru", "jit", "none"]

OLLAMA_MAX_QUEUE = 512  # OLLAMA_MAX_QUEUE's default
TGI_MAX_CONCURRENT = 128  # --max-concurrent-requests' default
OLLAMA_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE's default (5m)
LMSTUDIO_TTL_S = 3600.0  # idle TTL of a JIT-loaded model (60 min)


@dataclass(frozen=True, slots=True)
class BackendPolicy:
    """Residency and admission rules of one backend kind.

    ``on_demand``: a request for an unloaded model loads it. ``evict``: which resident models a
    load may unload to make room (``jit``: only idle models that were loaded on demand).
    ``single_jit``: LM Studio's auto-evict, at most one model loaded on demand at a time.
    ``keep_alive_s`` is the idle time before unload (below zero: never); ``request_keep_alive``
    says whether a request may change it. ``queue_scope`` says what ``queue_limit`` counts:
    requests waiting on the box, waiting for one model, or all requests in flight.
    """

    on_demand: bool
    evict: Eviction
    single_jit: bool
    max_loaded: int
    keep_alive_s: float
    request_keep_alive: bool
    queue_scope: QueueScope
    queue_limit: int | None

    @classmethod
    def for_kind(
        cls,
        kind: str,
        *,
        models: int,
        gpus: int,
        keep_alive_s: float | None,
        max_queue: int | None,
        jit: bool,
    ) -> BackendPolicy:
        # vLLM's rules; the others differ from them where the table above says.
        static = cls(
            on_demand=False,
            evict="none",
            single_jit=False,
            max_loaded=models,
            keep_alive_s=-1.0,
            request_keep_alive=False,
            queue_scope="box",
            queue_limit=max_queue,
        )
        if kind == "ollama":
            return replace(
                static,
                on_demand=True,
                evict="lru",
                max_loaded=3 * gpus,  # OLLAMA_MAX_LOADED_MODELS' automatic value
                keep_alive_s=OLLAMA_KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s,
                request_keep_alive=True,
                queue_limit=OLLAMA_MAX_QUEUE if max_queue is None else max_queue,
            )
        if kind == "lmstudio":
            return replace(
                static,
                on_demand=jit,
                evict="jit",
                single_jit=True,
                keep_alive_s=LMSTUDIO_TTL_S if keep_alive_s is None else keep_alive_s,
                request_keep_alive=True,
            )
        if kind == "triton":
            return replace(static, queue_scope="model")
        if kind == "tgi":
            limit = TGI_MAX_CONCURRENT if max_queue is None else max_queue
            return replace(static, queue_scope="in_flight", queue_limit=limit)
        return static
