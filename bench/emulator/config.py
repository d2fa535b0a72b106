"""Settings of one emulated GPU box, validated once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .capacity import DEFAULT_CAPACITY_FILE, ModelSpec, load_capacity
from .gpus import gib_to_bytes, per_gpu_bytes, place
from .policy import BackendPolicy

KINDS = ("ollama", "vllm", "tgi", "triton", "lmstudio", "llamacpp")
DEFAULT_VERSIONS = {
    "vllm": "0.11.0",
    "ollama": "0.12.6",
    "tgi": "3.3.6",
    "triton": "2.59.0",
    "lmstudio": "0.4.2",
    "llamacpp": "b1-0c1e570",  # llama-server's build_info
}
SINGLE_MODEL_KINDS = ("vllm", "tgi", "llamacpp")  # one model per server process
NO_QUEUE_LIMIT_KINDS = ("lmstudio", "llamacpp")  # no overload answer: everything waits
# llama.cpp recomputes only the part of a prompt its cache misses, so its face charges prefill
# time per uncached token; a 7B Q4 model on one mid-range GPU reads prompts at about this rate.
LLAMACPP_PREFILL_TOK_S = 2000.0


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """What the emulated box runs and how fast.

    ``max_queue`` None means the backend's own default: 512 waiting on Ollama, 128 in flight on
    TGI (``--max-concurrent-requests``), unbounded on vLLM (a number emulates
    ``--max-num-queued-reqs``) and on Triton (a number is each model's ``max_queue_size``); LM
    Studio has no overload answer, so it takes none. ``keep_alive_s`` None means the backend's
    default idle time before unload (Ollama 5 min, LM Studio's JIT TTL 60 min); below zero keeps
    models loaded forever. ``jit`` (LM Studio) loads models on demand. ``served_names`` (vLLM
    only) are the names the model is served under, as ``--served-model-name``.
    ``preload`` None loads every model that fits at start (Triton ``--load-model=*``).
    ``prefill_tok_s``: prompt tokens read per second before the first token, on top of
    ``ttft_s``; None is the kind's default (llamacpp: ``LLAMACPP_PREFILL_TOK_S``, others: no
    per-token cost). ``context_length`` is the whole context (llama-server's ``-c``); llamacpp
    gives each slot an equal share of it.
    """

    kind: str
    models: tuple[str, ...]
    gpu_memory_gb: tuple[float, ...] = (24.0,)
    gpu_name: str = "NVIDIA L4 (emulated)"
    tok_s: float | None = None
    ttft_s: float = 0.05
    slots: int | None = None
    max_queue: int | None = None
    load_time_scale: float = 1.0
    keep_alive_s: float | None = None
    jit: bool = True
    preload: tuple[str, ...] | None = None
    version: str | None = None
    served_names: tuple[str, ...] = ()
    context_length: int = 8192
    prefill_tok_s: float | None = None
    capacity_file: Path = DEFAULT_CAPACITY_FILE
    # Derived in __post_init__.
    specs: tuple[ModelSpec, ...] = field(init=False, repr=False, compare=False)
    start_loaded: tuple[str, ...] = field(init=False, repr=False, compare=False)
    policy: BackendPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_scalars()
        policy = BackendPolicy.for_kind(
            self.kind,
            models=len(self.models),
            gpus=len(self.gpu_memory_gb),
            keep_alive_s=self.keep_alive_s,
            max_queue=self.max_queue,
            jit=self.jit,
        )
        object.__setattr__(self, "policy", policy)
        table = load_capacity(self.capacity_file)
        unknown = [m for m in self.models if m not in table]
        if unknown:
            raise ValueError(
                f"unknown model(s) {', '.join(unknown)}: add them to [models] in "
                f"{self.capacity_file} (known: {', '.join(sorted(table))})"
            )
        specs = tuple(table[m] for m in self.models)
        totals = [gib_to_bytes(g) for g in self.gpu_memory_gb]
        for spec in specs:
            if place(totals, spec) is None:
                raise ValueError(
                    f"model '{spec.name}' needs {spec.cls.vram_gb:g} GiB over {spec.cls.gpus} "
                    f"GPU(s) ({per_gpu_bytes(spec) / 2**30:g} GiB each) but the GPUs have "
                    f"{', '.join(f'{g:g}' for g in self.gpu_memory_gb)} GiB"
                )
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "start_loaded", self._resolve_preload(specs, totals))
        if self.version is None:
            object.__setattr__(self, "version", DEFAULT_VERSIONS[self.kind])
        if self.prefill_tok_s is None and self.kind == "llamacpp":
            object.__setattr__(self, "prefill_tok_s", LLAMACPP_PREFILL_TOK_S)

    def _check_scalars(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not '{self.kind}'")
        if not self.models:
            raise ValueError("at least one model is required")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models must not repeat")
        if self.kind in SINGLE_MODEL_KINDS and len(self.models) != 1:
            raise ValueError(
                f"{self.kind} serves exactly one model per process, got {len(self.models)}"
            )
        if self.kind != "vllm" and self.served_names:
            raise ValueError("served_names is a vllm option")
        if self.kind != "lmstudio" and not self.jit:
            raise ValueError("jit is an lmstudio option")
        if self.kind in NO_QUEUE_LIMIT_KINDS and self.max_queue is not None:
            raise ValueError(f"{self.kind} has no request queue limit (max_queue must be None)")
        if self.kind == "triton" and any("/" in m for m in self.models):
            raise ValueError("triton model names are repository folder names: no '/'")
        if not self.gpu_memory_gb or any(g <= 0 for g in self.gpu_memory_gb):
            raise ValueError("gpu_memory_gb must list at least one positive size")
        if self.tok_s is not None and self.tok_s <= 0:
            raise ValueError("tok_s must be positive")
        if self.ttft_s < 0 or self.load_time_scale < 0:
            raise ValueError("ttft_s and load_time_scale must not be negative")
        if self.slots is not None and self.slots < 1:
            raise ValueError("slots must be at least 1")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must not be negative")
        if self.context_length < 1:
            raise ValueError("context_length must be positive")
        if self.prefill_tok_s is not None and self.prefill_tok_s <= 0:
            raise ValueError("prefill_tok_s must be positive")

    def _resolve_preload(self, specs: tuple[ModelSpec, ...], totals: list[int]) -> tuple[str, ...]:
        if self.kind in SINGLE_MODEL_KINDS:
            return self.models
        if self.preload is not None:
            missing = [m for m in self.preload if m not in self.models]
            if missing:
                raise ValueError(f"preload names models not served: {', '.join(missing)}")
        free, chosen = list(totals), list[str]()
        for spec in specs:
            if self.preload is not None and spec.name not in self.preload:
                continue
            if len(chosen) >= self.policy.max_loaded:
                break
            where = place(free, spec)
            if where is None:
                if self.preload is not None:
                    raise ValueError(f"preloaded model '{spec.name}' does not fit beside the rest")
                continue
            for i in where:
                free[i] -= per_gpu_bytes(spec)
            chosen.append(spec.name)
        return tuple(chosen)

    @property
    def queue_limit(self) -> int | None:
        """Most requests that may wait (or, on TGI, be in flight) at once; None is unbounded."""
        return self.policy.queue_limit

    @property
    def names(self) -> tuple[str, ...]:
        """vLLM's served names (first is the canonical one)."""
        return self.served_names or self.models
