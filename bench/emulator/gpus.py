"""Emulated GPUs: memory totals, reservations per loaded model, and the report NVML would give.

Placement is pure (:func:`place`), so the config can check at start that models fit and the
engine can place them at load time with the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node_protocol.wire import GpuReport

from .capacity import GIB, ModelSpec

# Memory a backend runner's CUDA context holds on a GPU that has a model on it. Counted as used
# (clamped to the total) but not needed for a model to fit, so a 24 GiB class fits a 24 GiB GPU.
RUNNER_OVERHEAD_BYTES = 256 * 1024**2


def per_gpu_bytes(spec: ModelSpec) -> int:
    """VRAM the model takes on each GPU it is spread over."""
    return -(-spec.cls.vram_bytes // spec.cls.gpus)


def place(free: Sequence[int], spec: ModelSpec) -> tuple[int, ...] | None:
    """The GPUs (most free memory first) that can hold ``spec``, or None if it does not fit."""
    need, count = per_gpu_bytes(spec), spec.cls.gpus
    order = sorted(range(len(free)), key=lambda i: (-free[i], i))[:count]
    if len(order) < count or any(free[i] < need for i in order):
        return None
    return tuple(sorted(order))


def gib_to_bytes(gib: float) -> int:
    return int(gib * GIB)


class GpuPool:
    """The box's GPUs and what each loaded (or loading) model reserves on them."""

    def __init__(self, name: str, totals: Sequence[int]) -> None:
        self.name = name
        self.totals = tuple(totals)
        self._reserved = [0] * len(self.totals)
        self._holders = [0] * len(self.totals)

    def free(self) -> list[int]:
        return [t - r for t, r in zip(self.totals, self._reserved, strict=True)]

    def reserve(self, spec: ModelSpec) -> tuple[int, ...] | None:
        """Reserve room for ``spec`` and return where it went, or None when it does not fit."""
        where = place(self.free(), spec)
        if where is not None:
            for i in where:
                self._reserved[i] += per_gpu_bytes(spec)
                self._holders[i] += 1
        return where

    def release(self, spec: ModelSpec, where: tuple[int, ...]) -> None:
        for i in where:
            self._reserved[i] -= per_gpu_bytes(spec)
            self._holders[i] -= 1

    def used(self, index: int) -> int:
        if self._holders[index] == 0:
            return 0
        return min(self.totals[index], self._reserved[index] + RUNNER_OVERHEAD_BYTES)

    def reports(self, busy: Mapping[int, tuple[int, int]]) -> list[GpuReport]:
        """One report per GPU; ``busy`` maps a GPU index to (busy slots, total slots) on it."""
        out = []
        for i, total in enumerate(self.totals):
            running, slots = busy.get(i, (0, 0))
            util = round(100.0 * running / slots, 1) if slots else 0.0
            out.append(
                GpuReport(
                    index=i,
                    name=self.name,
                    memory_total_bytes=total,
                    memory_used_bytes=self.used(i),
                    utilization_pct=util,
                )
            )
        return out
