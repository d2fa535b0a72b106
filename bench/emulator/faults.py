"""Faults injected at runtime through ``POST /_emulator/faults``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAULT_MODES = (
    "none",
    "error_500",
    "hang",
    "die_mid_stream",
    "error_mid_stream",
    "slow",
    "garbage",
)
FAULT_MESSAGE = "emulated fault: the backend failed"


@dataclass(frozen=True, slots=True)
class Fault:
    """The active fault.

    ``factor`` scales every token delay (first token included) in ``slow`` mode; ``after`` is how
    many tokens ``die_mid_stream`` sends before it aborts the connection, and
    ``error_mid_stream`` before it ends the stream with the face's in-stream error event.
    """

    mode: str = "none"
    factor: float = 10.0
    after: int = 3

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        if self.factor <= 0:
            raise ValueError("factor must be positive")
        if self.after < 0:
            raise ValueError("after must not be negative")

    def cut_after(self) -> int | None:
        """Tokens sent before a mid-stream fault strikes; None when none is set."""
        return self.after if self.mode in ("die_mid_stream", "error_mid_stream") else None

    @property
    def delay_factor(self) -> float:
        return self.factor if self.mode == "slow" else 1.0

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict) or not isinstance(raw.get("mode"), str):
            raise ValueError("body must be an object with a string 'mode'")
        factor = raw.get("factor", 10.0)
        after = raw.get("after", 3)
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise ValueError("factor must be a number")
        if isinstance(after, bool) or not isinstance(after, int):
            raise ValueError("after must be an integer")
        return cls(mode=raw["mode"], factor=float(factor), after=after)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "factor": self.factor, "after": self.after}
