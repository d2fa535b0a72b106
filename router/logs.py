"""Logging setup: human lines in a terminal, JSON lines when asked (or when not a terminal)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line.update(extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def use_json(fmt: str, stream: TextIO) -> bool:
    """``fmt`` is ``json``, ``text`` or ``auto`` (text on a terminal, JSON otherwise)."""
    return fmt == "json" or (fmt == "auto" and not stream.isatty())


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if use_json(fmt, sys.stderr):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
