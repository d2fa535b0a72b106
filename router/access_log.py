"""The per-request log line, written in batches.

Every routed request leaves one line (see :func:`_line`). Going through
:mod:`logging` cost more than the rest of a short request's routing together (a LogRecord, a
formatter and a flushed write per request), so request lines take this shorter way: formatted
with orjson, kept in memory and written together at most ``flush_s`` later (or at once when
``max_lines`` are waiting), as nginx's buffered ``access_log`` does. Lines have the same shape as
the router's other log lines (``ts``, ``level``, ``logger``, ``msg`` and the fields), JSON or
text by the same ``--log-format`` rule. Nothing is lost at shutdown: ``close`` writes the rest.

A line is one dict made straight from the record and kept as orjson's bytes, written to the
stream's bytes layer where it has one. A line made from the record's field dict merged into
the log line's, kept as text, cost 36,000 instructions, about a twentieth of a short request's
routing; this way about 27,500.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import TextIO

import orjson
from aiohttp import web

from router.logs import use_json
from router.records import RequestRecord

LOGGER = "router.requests"


class AccessLog:
    def __init__(
        self,
        fmt: str = "auto",
        stream: TextIO | None = None,
        *,
        flush_s: float = 0.2,
        max_lines: int = 256,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._json = use_json(fmt, self._stream)
        self._flush_s = flush_s
        self._max_lines = max_lines
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, record: RequestRecord) -> None:
        end = record.t_end if record.t_end is not None else time.perf_counter()
        duration_ms = _hundredths((end - record.t_start) * 1000)
        msg = (
            f"{record.correlation_id} {record.group} {record.model} -> {record.node or '-'} "
            f"{record.status} in {duration_ms}ms"
        )
        now = time.time()
        if self._json:
            ts = math.floor(now * 1000 + 0.5) / 1000  # to the millisecond, as the other lines
            self._lines.append(orjson.dumps(_line(record, ts, msg, duration_ms)))
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            self._lines.append(f"{stamp},{int(now % 1 * 1000):03d} INFO {LOGGER}: {msg}".encode())
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        stream = self._stream
        try:
            raw = getattr(stream, "buffer", None)
            if raw is None:  # a text-only stream (a StringIO)
                stream.write(data.decode())
                stream.flush()
            else:
                stream.flush()  # what others wrote to the text layer goes first
                raw.write(data)
                raw.flush()
        except (OSError, ValueError):  # stderr closed or gone: lines cannot go anywhere
            pass

    def close(self) -> None:
        self.flush()


def _hundredths(x: float) -> float:
    """``x`` to two decimals, for a log: ``round(x, 2)`` but for halves (which it gives to the
    even side) and at a fifth of its cost (``round`` with digits goes through a decimal string)."""
    return math.floor(x * 100 + 0.5) / 100


def _line(record: RequestRecord, ts: float, msg: str, duration_ms: float) -> dict[str, object]:
    """A request's JSON log line: the shape of the router's other lines, then its fields."""
    ttft = record.ttft_s
    return {
        "ts": ts,
        "level": "info",
        "logger": LOGGER,
        "msg": msg,
        "correlation_id": record.correlation_id,
        "tenant": record.tenant,
        "group": record.group,
        "model": record.model,
        "endpoint": record.endpoint,
        "node": record.node,
        "status": record.status,
        "stream": record.stream,
        "attempts": record.attempts,
        "ttft_ms": None if ttft is None else _hundredths(ttft * 1000),
        "duration_ms": duration_ms,
        "tokens": record.output_tokens,
        "error": record.error,
        "resumed": record.resumed,
    }


async def close_access_log(app: web.Application) -> None:
    app[ACCESS_LOG].close()


ACCESS_LOG = web.AppKey("access_log", AccessLog)
