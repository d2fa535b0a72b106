"""The per-request log: one line per request, written in batches, nothing lost at close."""

from __future__ import annotations

import asyncio
import io

import orjson

from router.access_log import AccessLog
from router.records import RequestRecord


def record(n: int) -> RequestRecord:
    r = RequestRecord(
        group="g", model="m", endpoint="/v1/chat/completions", tenant="acme", correlation_id=f"c{n}"
    )
    r.node, r.status, r.t_end = "node-a", 200, r.t_start + 0.0125
    return r


async def test_lines_are_written_together_after_the_flush_interval() -> None:
    out = io.StringIO()
    log = AccessLog("json", out, flush_s=0.05)
    for n in range(3):
        log.write(record(n))
    assert out.getvalue() == ""  # held, not one write per request
    await asyncio.sleep(0.15)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["correlation_id"] for line in lines] == ["c0", "c1", "c2"]
    first = lines[0]
    assert first["logger"] == "router.requests"
    assert first["level"] == "info"
    assert (first["tenant"], first["node"], first["status"]) == ("acme", "node-a", 200)
    assert first["duration_ms"] == 12.5
    assert first["msg"] == "c0 g m -> node-a 200 in 12.5ms"


async def test_a_full_batch_is_written_at_once() -> None:
    out = io.StringIO()
    log = AccessLog("json", out, flush_s=60, max_lines=4)
    for n in range(5):
        log.write(record(n))
    assert len(out.getvalue().splitlines()) == 4
    log.close()  # the rest at close: nothing lost at shutdown
    assert len(out.getvalue().splitlines()) == 5


def test_text_lines_outside_a_loop_are_written_at_once() -> None:
    out = io.StringIO()
    AccessLog("text", out).write(record(7))
    assert out.getvalue().rstrip().endswith("INFO router.requests: c7 g m -> node-a 200 in 12.5ms")


def test_lines_go_to_the_bytes_layer_after_what_the_text_layer_holds() -> None:
    """stderr is a text stream over a bytes buffer: request lines go to the buffer, after any
    line another logger left in the text layer (the two never interleave out of order)."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    out.write("an earlier line\n")  # still in the text layer's own buffer
    AccessLog("json", out).write(record(8))  # no loop: written at once
    lines = raw.getvalue().decode().splitlines()
    assert lines[0] == "an earlier line"
    assert orjson.loads(lines[1])["msg"] == "c8 g m -> node-a 200 in 12.5ms"
