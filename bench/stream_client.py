"""One streamed OpenAI chat over aiohttp, read into a :class:`ClientRecord` as it arrives."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.records import CONNECTION, TIMEOUT, ClientRecord, status_error
from bench.sse import SseDecoder, StreamTally


async def stream_into(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    rec: ClientRecord,
    on_event: Callable[[str], None] | None = None,
) -> None:
    """POST ``body`` and tally its stream into ``rec`` (status, node, first token, tokens,
    end, error); ``on_event`` also sees each event's data. A failed connection or a timeout
    is recorded, not raised."""
    tally, decoder = StreamTally(rec), SseDecoder()
    try:
        async with session.post(url, json=body) as resp:
            rec.t_headers, rec.status = time.perf_counter(), resp.status
            rec.node = resp.headers.get("X-Inference-Node")
            rec.error = status_error(resp.status)
            async for line in resp.content:
                data = decoder.feed_line(line)
                if data is not None:
                    tally.event(data, time.perf_counter())
                    if on_event is not None:
                        on_event(data)
            tally.finish(time.perf_counter())
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec.error = TIMEOUT if isinstance(exc, TimeoutError) else CONNECTION
        rec.detail = repr(exc)[:200]
