"""The capacity table (``bench/capacity.toml``) read into typed model classes.

``[classes.X]`` rows describe a model size class (VRAM, GPUs, decode-rate band, batching decay,
load time, parallel slots); ``[models]`` maps a model name to its class.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CAPACITY_FILE = Path(__file__).parent.parent / "capacity.toml"
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class ModelClass:
    """One size class of the capacity table."""

    name: str
    vram_gb: float
    gpus: int
    min_tok_s: float
    max_tok_s: float
    batch_decay: float
    load_s: float
    slots: int

    @property
    def vram_bytes(self) -> int:
        return int(self.vram_gb * GIB)

    @property
    def mid_tok_s(self) -> float:
        return (self.min_tok_s + self.max_tok_s) / 2


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A served model name and the class it belongs to."""

    name: str
    cls: ModelClass


def _number(row: Mapping[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: '{key}' must be a number")
    return float(value)


def _class(name: str, row: Any) -> ModelClass:
    where = f"capacity table [classes.{name}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be a table")
    cls = ModelClass(
        name=name,
        vram_gb=_number(row, "vram_gb", where),
        gpus=int(_number(row, "gpus", where)),
        min_tok_s=_number(row, "min_tok_s", where),
        max_tok_s=_number(row, "max_tok_s", where),
        batch_decay=_number(row, "batch_decay", where),
        load_s=_number(row, "load_s", where),
        slots=int(_number(row, "slots", where)),
    )
    if cls.vram_gb <= 0 or cls.gpus < 1 or cls.slots < 1 or cls.min_tok_s <= 0:
        raise ValueError(f"{where}: vram_gb, gpus, slots and min_tok_s must be positive")
    return cls


def load_capacity(path: Path = DEFAULT_CAPACITY_FILE) -> dict[str, ModelSpec]:
    """Read the table and return every known model name with its class."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    classes = {name: _class(name, row) for name, row in data.get("classes", {}).items()}
    specs: dict[str, ModelSpec] = {}
    for model, class_name in data.get("models", {}).items():
        if class_name not in classes:
            raise ValueError(f"capacity table: model '{model}' names unknown class '{class_name}'")
        specs[model] = ModelSpec(name=model, cls=classes[class_name])
    return specs
