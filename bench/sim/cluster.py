"""The simulated fleet: GPUs, nodes and the model engines on them, from the capacity table.

A *node* is a box with GPUs (a VRAM total); an *engine* is one model on one node (the
backend's runner for it): ``slots`` parallel streams, a per-stream decode speed that falls as
the batch grows, ``rate(b) = tok_s / (1 + batch_decay * (b - 1))``, a load time and a VRAM
need, all from ``bench/capacity.toml``. A GPU's ``speed`` scales the class's decode speed.

Prefill: a stream reads ``PREFILL_RATIO`` prompt tokens in the time it decodes one token, so a
node's prefill rate follows its GPU class and model like its decode speed does (a 7B model at
batch 1: about 2,600 tokens/s on an L4, 4,800 on an RTX 3090, 9,600 on an H100).

Prompt cache (KV memory): what the GPUs hold beyond the model's weights, ``KV_SHARE`` of it
for the cache (the engine keeps the rest for activations), at ``KV_BYTES_PER_TOKEN``: fp16 keys
and values of an 8B model with grouped-query attention (32 layers, 8 KV heads of 128). So a
24 GB GPU with a 7B model (8 GB) caches about 110k tokens, an 80 GB one about 490k. One figure
for every model (only the prefix-aware scenarios use it, with 7B models), and every model on a
node counted as if alone there.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPACITY_FILE = Path(__file__).parent.parent / "capacity.toml"
PREFILL_RATIO = 80.0  # prompt tokens processed in the time of one decoded token
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # keys and values, layers, KV heads, head size, fp16
KV_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class ModelClass:
    """One row of the capacity table's ``[classes]``."""

    name: str
    vram_gb: float
    tok_s: float  # middle of the table's per-stream decode band
    batch_decay: float
    load_s: float
    slots: int


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU kind: memory and decode speed relative to the capacity table's middle."""

    name: str
    vram_gb: float
    speed: float


GPUS = {
    g.name: g
    for g in (
        Gpu("L4", 24, 0.55),
        Gpu("A10G", 24, 0.7),
        Gpu("RTX3090", 24, 1.0),
        Gpu("RTX4090", 24, 1.25),
        Gpu("A100-80G", 80, 1.5),
        Gpu("H100-80G", 80, 2.0),
    )
}


def _num(row: dict[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: '{key}' must be a number")
    return float(value)


def load_capacity(path: Path = CAPACITY_FILE) -> dict[str, ModelClass]:
    """Every model name of the table with its class."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    classes: dict[str, ModelClass] = {}
    for name, row in data.get("classes", {}).items():
        where = f"{path.name} [classes.{name}]"
        classes[name] = ModelClass(
            name=name,
            vram_gb=_num(row, "vram_gb", where),
            tok_s=(_num(row, "min_tok_s", where) + _num(row, "max_tok_s", where)) / 2,
            batch_decay=_num(row, "batch_decay", where),
            load_s=_num(row, "load_s", where),
            slots=int(_num(row, "slots", where)),
        )
    return {model: classes[cls] for model, cls in data.get("models", {}).items()}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One box: its GPUs, the models it can serve and those loaded at the start."""

    name: str
    gpu: str
    gpu_count: int
    models: tuple[str, ...]
    loaded: tuple[str, ...]
    weight: float = 1.0

    @property
    def vram_gb(self) -> float:
        return GPUS[self.gpu].vram_gb * self.gpu_count


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One model on one node, with everything the node-side simulation needs."""

    node: int
    model: str
    slots: int
    tok_s: float
    batch_decay: float
    load_s: float
    vram_gb: float
    cache_tokens: int = 0  # prompt tokens its prefix cache holds

    def rate(self, batch: int) -> float:
        return self.tok_s / (1.0 + self.batch_decay * (batch - 1))

    def capacity_units_s(self) -> float:
        """Work units (decoded-token equivalents) per second with every slot busy."""
        return self.slots * self.rate(self.slots)


def engines_for(
    nodes: Sequence[NodeSpec], table: dict[str, ModelClass] | None = None
) -> list[EngineSpec]:
    """The engines of a fleet, node by node, in model order."""
    table = table or load_capacity()
    out = []
    for i, node in enumerate(nodes):
        gpu = GPUS[node.gpu]
        for model in node.models:
            cls = table[model]
            if cls.vram_gb > node.vram_gb:
                raise ValueError(f"{model} cannot fit {node.name} ({node.vram_gb} GB)")
            out.append(
                EngineSpec(
                    node=i,
                    model=model,
                    slots=cls.slots,
                    tok_s=cls.tok_s * gpu.speed,
                    batch_decay=cls.batch_decay,
                    load_s=cls.load_s,
                    vram_gb=cls.vram_gb,
                    cache_tokens=int(
                        (node.vram_gb - cls.vram_gb) * 1e9 * KV_SHARE / KV_BYTES_PER_TOKEN
                    ),
                )
            )
    return out


def dedicated(layout: Sequence[tuple[str, str, int]]) -> list[NodeSpec]:
    """Nodes that each serve one model, kept loaded: (model, gpu, how many such nodes)."""
    nodes: list[NodeSpec] = []
    for model, gpu, count in layout:
        per_node = 2 if model.endswith("70b") and GPUS[gpu].vram_gb < 48 else 1
        for _ in range(count):
            name = f"{gpu.lower()}-{len(nodes):04d}"
            nodes.append(NodeSpec(name, gpu, per_node, (model,), (model,)))
    return nodes
