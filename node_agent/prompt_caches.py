"""The node's prompt caches, one :class:`~node_agent.prefix_index.PrefixIndex` per model, fed by
the proxy and summarised in every load report.

The proxy calls :meth:`PromptCaches.arrive` once the engine accepted a request with a prompt
(an answer with status 200: a refused request filled no cache). The body is parsed here (the
agent relays bytes and reads no body otherwise), fingerprinted, looked up (what the index held
is the estimate of the characters that arrived onto a cached prefix) and recorded. When the
answer ends, :meth:`Arrival.settle` passes on the engine's own counts, if it sent any (OpenAI
``usage.prompt_tokens_details.cached_tokens``, llama.cpp ``timings.cache_n``), to correct the
index and keep the engine's own cached-token ratio.

Sizes, from what the backend reports (tokens, at :data:`CHARS_PER_TOKEN`): the engine's KV
capacity where it says (vLLM's ``num_gpu_blocks`` times ``block_size``), else the model's
context times its parallel slots (llama.cpp: one slot's context times its slots), else
:data:`DEFAULT_TOKENS`. Models are named as the report names them (an alias is its model's
id); on a backend that reports one model, every request is for it, whatever it names (or a
body without a model). At most :data:`MAX_MODELS` models are kept, the least recently used
going first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import orjson

from node_protocol.prompt_prefix import SCHEME, Fingerprint, fingerprint, is_prompt_path
from node_protocol.wire import MAX_PREFIX_MODELS, ModelReport, PrefixSummary

from .prefix_index import PrefixIndex

CHARS_PER_TOKEN = 4
DEFAULT_TOKENS = 32_768
MAX_MODELS = MAX_PREFIX_MODELS
SUMMARY_HASHES = 512  # per model in each report: about 5 KB of JSON
REPORT_HASHES = 2048  # over all models in one report: the busiest models' summaries first
RATIO_DECAY = 0.98  # the engine's cached ratio weighs about the last 50 answers that report it


@dataclass(slots=True)
class ModelCache:
    """One model's index and counters."""

    index: PrefixIndex
    prompt_chars: int = 0  # characters of the prompts that arrived
    cached_chars: int = 0  # of those, on a prefix the index held (an estimate)
    engine_prompt_tokens: int = 0  # in answers that said how many were cached
    engine_cached_tokens: int = 0
    recent_prompt_tokens: float = 0.0  # the same, decayed by RATIO_DECAY per answer
    recent_cached_tokens: float = 0.0

    @property
    def engine_cached_ratio(self) -> float | None:
        """The engine's recent cached share of prompt tokens; None when it never said."""
        if self.recent_prompt_tokens <= 0:
            return None
        return self.recent_cached_tokens / self.recent_prompt_tokens

    def engine_said(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.engine_prompt_tokens += prompt_tokens
        self.engine_cached_tokens += cached_tokens
        self.recent_prompt_tokens = self.recent_prompt_tokens * RATIO_DECAY + prompt_tokens
        self.recent_cached_tokens = self.recent_cached_tokens * RATIO_DECAY + cached_tokens


class Arrival:
    """One prompt the engine took: settled with its counts when the answer ends."""

    __slots__ = ("_cache", "fingerprint", "predicted_chars")

    def __init__(self, cache: ModelCache, fp: Fingerprint, predicted_chars: int) -> None:
        self._cache = cache
        self.fingerprint = fp
        self.predicted_chars = predicted_chars

    def settle(self, prompt_tokens: int | None, cached_tokens: int | None) -> None:
        """The engine's counts for this prompt, when its answer had them."""
        if prompt_tokens is None or cached_tokens is None or prompt_tokens <= 0:
            return
        cached_tokens = min(cached_tokens, prompt_tokens)
        self._cache.engine_said(prompt_tokens, cached_tokens)
        engine_chars = self.fingerprint.chars * cached_tokens // prompt_tokens
        self._cache.index.correct(self.predicted_chars, engine_chars)


class PromptCaches:
    """Every model's index on this node."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, ModelCache] = OrderedDict()
        self._names: dict[str, str] = {}  # alias -> model id
        self._only: str | None = None  # the one model, when the backend reports one
        self._estimates: dict[str, int] = {}  # model id -> its cache estimate, in characters

    def models(self) -> dict[str, ModelCache]:
        return dict(self._models)

    def configure(self, models: tuple[ModelReport, ...], kv_capacity_tokens: int | None) -> None:
        """The backend's latest models and KV capacity: names and sizes from now on."""
        self._names = {alias: m.id for m in models for alias in m.aliases}
        self._only = models[0].id if len(models) == 1 else None
        self._estimates = {m.id: estimate_chars(m, kv_capacity_tokens) for m in models}
        for model, cache in self._models.items():
            if model in self._estimates:
                cache.index.resize(self._estimates[model])

    def arrive(self, path: str, body: bytes, route_model: str | None = None) -> Arrival | None:
        """A request the engine took (status 200): fingerprint and record its prompt.

        ``route_model`` is the model the route names (Triton's ``/v2/models/{model}/...``).
        None when the path carries no prompt or the body holds none.
        """
        if not is_prompt_path(path):
            return None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(parsed) is not dict:
            return None
        fp = fingerprint(parsed)
        if not fp.blocks:
            return None
        named = parsed.get("model")
        cache = self._cache_for(route_model or (named if type(named) is str else ""))
        predicted = cache.index.held_chars(fp)
        cache.index.record(fp)
        cache.prompt_chars += fp.chars
        cache.cached_chars += predicted
        return Arrival(cache, fp, predicted)

    def summaries(
        self, limit: int = SUMMARY_HASHES, total: int = REPORT_HASHES
    ) -> tuple[PrefixSummary, ...]:
        """Each model's summary for the load report: at most ``limit`` hashes a model and
        ``total`` in all, the most recently used models first."""
        found: list[PrefixSummary] = []
        for model, cache in reversed(self._models.items()):
            room = min(limit, total)
            if not len(cache.index) or room <= 0:
                continue
            hashes = cache.index.recent(room)
            total -= len(hashes)
            found.append(
                PrefixSummary(
                    model=model,
                    scheme=SCHEME,
                    hashes=hashes,
                    capacity_chars=cache.index.capacity_chars,
                    used_chars=cache.index.used_chars,
                    engine_cached_ratio=cache.engine_cached_ratio,
                )
            )
        return tuple(found)

    def _cache_for(self, model: str) -> ModelCache:
        # A backend that reports one model serves it under any name (llama.cpp does).
        model = self._only or self._names.get(model, model)
        cache = self._models.get(model)
        if cache is None:
            estimate = self._estimates.get(model, DEFAULT_TOKENS * CHARS_PER_TOKEN)
            cache = self._models[model] = ModelCache(PrefixIndex(estimate))
            if len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(model)
        return cache


def estimate_chars(model: ModelReport, kv_capacity_tokens: int | None) -> int:
    """The characters a model's prompt cache holds, from what the backend reports."""
    if kv_capacity_tokens:
        tokens = kv_capacity_tokens
    elif model.context_length:
        tokens = model.context_length * (model.max_parallel or 1)
    else:
        tokens = DEFAULT_TOKENS
    return tokens * CHARS_PER_TOKEN
