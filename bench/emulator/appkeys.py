"""Typed keys under which the emulator app keeps its long-lived objects."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import EmulatorConfig
from .engine import Engine


@dataclass(slots=True)
class Endpoints:
    """Where the running emulator listens, filled in by ``serve()`` once bound (the app is
    frozen by then, so this object is set before and changed in place)."""

    url: str | None = None
    metrics_url: str | None = None


CONFIG = web.AppKey("emulator.config", EmulatorConfig)
ENGINE = web.AppKey("emulator.engine", Engine)
JOURNAL = web.AppKey("emulator.journal", deque[dict[str, Any]])
METRICS = web.AppKey("emulator.metrics", CollectorRegistry)
ENDPOINTS = web.AppKey("emulator.endpoints", Endpoints)
# The journal entry of the request being handled, so a handler can add the model it parsed.
JOURNAL_ENTRY = web.RequestKey("emulator.journal_entry", dict[str, Any])
