"""How Ollama describes its models: names with tags, digests, details, tags and ps entries."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

from .capacity import ModelSpec
from .catalog import QUANTIZATION, facts
from .gotime import FOREVER_S, rfc3339
from .residency import ModelState


def display_name(name: str) -> str:
    """``model:tag`` as Ollama lists it (tag ``latest`` when none was given)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def resolve(served: Iterable[str], requested: str) -> str | None:
    """The served model a request names, accepting ``x`` for ``x:latest`` and back."""
    for name in served:
        if requested in (name, display_name(name)) or display_name(requested) == name:
            return name
    return None


def owner(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else "library"


def _details(spec: ModelSpec) -> dict[str, Any]:
    about = facts(spec)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": about.family,
        "families": [about.family],
        "parameter_size": about.parameter_size,
        "quantization_level": QUANTIZATION,
    }


def _digest(name: str) -> str:
    return hashlib.sha256(display_name(name).encode()).hexdigest()


def tag_entry(spec: ModelSpec, modified_unix: float) -> dict[str, Any]:
    name = display_name(spec.name)
    return {
        "name": name,
        "model": name,
        "modified_at": rfc3339(modified_unix),
        "size": facts(spec).disk_bytes,
        "digest": _digest(spec.name),
        "details": _details(spec),
    }


def ps_entry(st: ModelState, context_length: int) -> dict[str, Any]:
    name = display_name(st.name)
    deadline = st.expiry_deadline()
    remaining = FOREVER_S if deadline is None else max(0.0, deadline - time.monotonic())
    return {
        "name": name,
        "model": name,
        "size": st.spec.cls.vram_bytes,
        "digest": _digest(st.name),
        "details": _details(st.spec),
        "expires_at": rfc3339(time.time() + remaining),
        "size_vram": st.spec.cls.vram_bytes,
        "context_length": context_length,
    }


def ps_entries(states: Iterable[ModelState], context_length: int) -> list[dict[str, Any]]:
    """Loaded models, the longest time to keep-alive expiry first."""
    loaded = [st for st in states if st.loaded]

    def remaining(st: ModelState) -> float:
        deadline = st.expiry_deadline()
        return FOREVER_S if deadline is None else deadline

    return [ps_entry(st, context_length) for st in sorted(loaded, key=remaining, reverse=True)]


def openai_model(spec: ModelSpec, created: int) -> dict[str, Any]:
    return {
        "id": display_name(spec.name),
        "object": "model",
        "created": created,
        "owned_by": owner(spec.name),
    }
