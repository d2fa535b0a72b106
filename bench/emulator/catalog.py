"""What a model file looks like, guessed from its name and class: family, size, quantisation.

The capacity table knows only a name and a size class; backends that describe their models
(Ollama's tags, LM Studio's model lists) need a family, a parameter count and a file size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .capacity import ModelSpec

DISK_SHARE = 0.6  # a Q4 GGUF file is about 60% of the VRAM the class reserves
QUANTIZATION = "Q4_K_M"
QUANTIZATION_BITS = 4


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """``family`` (``llama``), ``params_b`` (8.0, None when the name has no size) and the GGUF
    file's size."""

    family: str
    params_b: float | None
    disk_bytes: int
    size_class: str

    @property
    def parameter_size(self) -> str:
        """Ollama's ``8.0B`` (the size class when the name has no size)."""
        return f"{self.params_b:.1f}B" if self.params_b is not None else self.size_class.upper()

    @property
    def params_string(self) -> str:
        """LM Studio's ``8B``."""
        if self.params_b is None:
            return self.size_class.upper()
        return f"{self.params_b:g}B"


def facts(spec: ModelSpec) -> ModelFacts:
    base = spec.name.rsplit("/", 1)[-1].lower()
    family = re.match(r"[a-z]*", base)
    size = re.search(r"(\d+(?:\.\d+)?)b", base.split(":")[-1]) or re.search(
        r"(\d+(?:\.\d+)?)b", base
    )
    return ModelFacts(
        family=(family.group(0) if family else "") or "llama",
        params_b=float(size.group(1)) if size else None,
        disk_bytes=int(spec.cls.vram_bytes * DISK_SHARE),
        size_class=spec.cls.name,
    )
