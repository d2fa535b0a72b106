"""Ollama: ``GET /`` for health, ``/api/tags`` (available) + ``/api/ps`` (loaded), ``/api/version``.

Ollama has no metrics, so the backend's queue and running counts are unknown (None).
"""

from __future__ import annotations

import asyncio
from typing import Any

from node_protocol.wire import ModelReport

from .base import Backend, BackendFacts, int_field, list_field, str_field


def _name(entry: dict[str, Any]) -> str | None:
    return str_field(entry, "name") or str_field(entry, "model")


def _aliases(name: str) -> tuple[str, ...]:
    """``llama3:latest`` is also reachable as ``llama3`` (Ollama's default tag)."""
    base, sep, tag = name.rpartition(":")
    return (base,) if sep and tag == "latest" and base else ()


def models_from_lists(
    tags: dict[str, Any] | None, ps: dict[str, Any] | None, max_parallel: int | None
) -> tuple[ModelReport, ...]:
    """Every downloaded model, marked loaded (with its VRAM and context) when ``/api/ps`` has it.

    ``size_bytes`` is the runner's footprint for a loaded model (``/api/ps`` ``size``) and the
    file size otherwise (``/api/tags`` ``size``): the best guess of what loading it would take.
    """
    loaded: dict[str, dict[str, Any]] = {}
    for entry in list_field(ps, "models"):
        name = _name(entry)
        if name is not None:
            loaded[name] = entry
    names: list[str] = []
    disk_size: dict[str, int | None] = {}
    for entry in list_field(tags, "models"):
        name = _name(entry)
        if name is not None and name not in disk_size:
            names.append(name)
            disk_size[name] = int_field(entry, "size")
    names.extend(n for n in loaded if n not in disk_size)
    reports = []
    for name in names:
        running = loaded.get(name)
        if running is None:
            reports.append(
                ModelReport(
                    id=name,
                    loaded=False,
                    aliases=_aliases(name),
                    size_bytes=disk_size.get(name),
                    max_parallel=max_parallel,
                )
            )
        else:
            reports.append(
                ModelReport(
                    id=name,
                    loaded=True,
                    aliases=_aliases(name),
                    vram_bytes=max(0, int_field(running, "size_vram") or 0),
                    size_bytes=int_field(running, "size") or disk_size.get(name),
                    max_parallel=max_parallel,
                    context_length=int_field(running, "context_length"),
                )
            )
    return tuple(reports)


class OllamaBackend(Backend):
    """Ollama: loads models on demand; ``/api/ps`` is the only load signal."""

    KIND = "ollama"
    LOADS_ON_DEMAND = True
    SLOTS_PER_MODEL = True
    health_path = "/"

    async def collect(self) -> BackendFacts:
        tags, ps, version = await asyncio.gather(
            self.get_json("/api/tags"), self.get_json("/api/ps"), self.get_json("/api/version")
        )
        return BackendFacts(
            models=models_from_lists(tags, ps, self.max_parallel),
            version=None if version is None else str_field(version, "version"),
        )
