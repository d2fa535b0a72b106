"""The per-request log line, written in batches.

Every routed request leaves one line (see :meth:`RequestRecord.fields`). Going through
:mod:`logging` cost more than the rest of a short request's routing together (a LogRecord, a
formatter and a flushed write per request), so request lines take this shorter way: formatted
with orjson, kept in memory and written together at most ``flush_s`` later (or at once when
``max_lines`` are waiting), as nginx's buffered ``access_log`` does. Lines have the same shape as
the router's other log lines (``ts``, ``level``, ``logger``, ``msg`` and the fields), JSON or
text by the same ``--log-format`` rule. Nothing is lost at shutdown: ``close`` writes the rest.
"""

from __future__ import annotations

import asyncio
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
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, record: RequestRecord) -> None:
        fields = record.fields()
        msg = (
            f"{record.correlation_id} {record.group} {record.model} -> {record.node or '-'} "
            f"{record.status} in {fields['duration_ms']}ms"
        )
        now = time.time()
        if self._json:
            line = {"ts": round(now, 3), "level": "info", "logger": LOGGER, "msg": msg, **fields}
            self._lines.append(orjson.dumps(line).decode())
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            self._lines.append(f"{stamp},{int(now % 1 * 1000):03d} INFO {LOGGER}: {msg}")
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
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: lines cannot go anywhere
            pass

    def close(self) -> None:
        self.flush()


async def close_access_log(app: web.Application) -> None:
    app[ACCESS_LOG].close()


ACCESS_LOG = web.AppKey("access_log", AccessLog)
