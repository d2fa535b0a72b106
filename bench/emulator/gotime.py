"""Go's time formats as Ollama writes and reads them: RFC 3339 stamps and duration strings."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

FOREVER_S = 292 * 365.25 * 86400  # Go's largest Duration, about 292 years
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def rfc3339(unix_s: float) -> str:
    """``2024-06-04T14:38:31.83753Z``: RFC 3339 in UTC with trailing zeros trimmed (Go's
    RFC3339Nano)."""
    stamp = datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0")
    return stamp.rstrip(".") + "Z"


def rfc3339_in(seconds_from_now: float) -> str:
    return rfc3339(time.time() + min(seconds_from_now, FOREVER_S))


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (``"5m"``, ``"1h30m"``, ``"-1s"``); ValueError with
    Go's message when it is not one."""
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None:
            if re.fullmatch(r"[\d.]+", body[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive``: a number of seconds or a duration string; below zero means
    forever (returned as -1). None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("json: cannot unmarshal keep_alive")
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    return -1.0 if seconds < 0 else seconds
