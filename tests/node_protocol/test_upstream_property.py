"""The client against a raw node that answers each request by its own script: any mix of
interim answers, chunked, length- and close-delimited bodies, kept and closed connections,
requests read and dropped, answers cut short, stray bytes, kept connections closed at idle.

Whatever the mix and the timing: no request ever reads a byte of another's answer, a POST the
node read is never written to it again, and an answer the node sent whole arrives whole."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.upstream import CallLimits, UpstreamBroken, UpstreamPool

from .raw_node import raw_server, read_request, request_line

LIMITS = CallLimits(connect_s=5.0, idle_s=5.0, total_s=20.0)
WORKERS = 3  # requests in flight at once, each worker's one after another
PIECE_PAUSE_S = 0.001


@dataclass(frozen=True)
class Script:
    """How the node treats one request."""

    method: str
    interim: tuple[int, ...]  # 1xx answers before the final one
    framing: str  # "length", "chunked" or "close" (the body ends with the connection: all
    # that comes before it is body, so nothing is cut or stray there)
    keep: bool  # the node keeps the connection after answering
    fate: str  # "answer", "drop" (read, hang up), "cut" (half the answer, hang up),
    # "stray" (answer, then bytes nobody asked for), "idle_close" (answer, hang up soon after)
    size: int
    pieces: int  # the answer goes out in this many writes

    def body(self, rid: int) -> bytes:
        return b"<%d>" % rid * self.size

    def answer(self, rid: int) -> bytes:
        interim = b"".join(
            b"HTTP/1.1 %d Interim\r\n%s\r\n" % (code, b"Link: </a>\r\n" if code == 103 else b"")
            for code in self.interim
        )
        body = self.body(rid)
        head = [b"HTTP/1.1 200 OK", b"X-Id: %d" % rid]
        if not self.keep:
            head.append(b"Connection: close")
        if self.framing == "length":
            head.append(b"Content-Length: %d" % len(body))
            payload = body
        elif self.framing == "chunked":
            head.append(b"Transfer-Encoding: chunked")
            half = len(body) // 2
            parts = [part for part in (body[:half], body[half:]) if part]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
            payload += b"0\r\nX-Trailer: %d\r\n\r\n" % rid
        else:
            payload = body
        return interim + b"\r\n".join(head) + b"\r\n\r\n" + payload


SCRIPTS = st.builds(
    Script,
    method=st.sampled_from(["POST", "POST", "GET"]),
    interim=st.lists(st.sampled_from([100, 102, 103]), max_size=2).map(tuple),
    framing=st.sampled_from(["length", "chunked", "close"]),
    keep=st.booleans(),
    fate=st.sampled_from(["answer", "answer", "drop", "cut", "stray", "idle_close"]),
    size=st.integers(1, 40),
    pieces=st.integers(1, 3),
).filter(lambda s: s.framing != "close" or (s.fate in ("answer", "drop") and not s.keep))


class Node:
    """Serves each request by its script; counts what it read."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.reads: Counter[int] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            rid = int(request_line(request).split()[1].rsplit(b"/", 1)[1])
            self.reads[rid] += 1
            script = self.scripts[rid]
            if not await self.serve(writer, script, rid):
                writer.close()
                return

    @staticmethod
    async def serve(writer: asyncio.StreamWriter, script: Script, rid: int) -> bool:
        """Answer by the script; False: hang up."""
        if script.fate == "drop":
            return False
        raw = script.answer(rid)
        if script.fate == "cut":
            raw = raw[: len(raw) - len(script.body(rid)) // 2 - 8]
        step = -(-len(raw) // script.pieces)
        for start in range(0, len(raw), step):
            if start:
                await asyncio.sleep(PIECE_PAUSE_S)
            writer.write(raw[start : start + step])
        if script.fate == "stray":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Id: stray\r\nContent-Length: 7\r\n\r\n<stray>")
        await writer.drain()
        if script.fate == "idle_close" and script.keep:
            await asyncio.sleep(PIECE_PAUSE_S)
            return False
        return script.keep and script.fate != "cut"


@dataclass
class Outcome:
    status: int | None = None
    headers: dict[str, str] | None = None
    got: bytes = b""
    error: Exception | None = None


async def call(pool: UpstreamPool, url: str, rid: int, script: Script) -> Outcome:
    body = b'{"id": %d}' % rid if script.method == "POST" else None
    outcome = Outcome()
    try:
        resp = await pool.request(script.method, url, f"/r/{rid}", body, {}, LIMITS)
    except UpstreamBroken as exc:
        outcome.error = exc
        return outcome
    outcome.status = resp.status
    try:
        while chunk := await resp.readany():
            outcome.got += chunk
    except UpstreamBroken as exc:
        outcome.error = exc
    finally:
        resp.close()
    outcome.headers = dict(resp.headers)  # after the body: trailers must not show here
    return outcome


def check(rid: int, script: Script, reads: int, outcome: Outcome) -> None:
    expected = script.body(rid)
    assert expected.startswith(outcome.got), f"request {rid} read {outcome.got!r}"
    if outcome.status is not None:
        assert outcome.status == 200
        assert outcome.headers is not None
        assert outcome.headers.get("x-id") == str(rid)
        assert "link" not in outcome.headers
        assert "x-trailer" not in outcome.headers
    assert reads <= (1 if script.method == "POST" else 2), f"request {rid} read {reads} times"
    if script.fate in ("drop", "cut"):
        assert outcome.error is not None
    elif outcome.error is not None:  # only when the node never read it: a connection it shut
        assert reads == 0, f"request {rid} failed after the node read it: {outcome.error!r}"
    else:
        assert outcome.got == expected


@settings(max_examples=30, deadline=None)
@given(scripts=st.lists(SCRIPTS, min_size=1, max_size=10))
async def test_no_request_reads_another_answer_and_no_post_goes_twice(
    scripts: list[Script],
) -> None:
    """Any mix of answers over shared kept connections: each request sees only its own answer
    (or a prefix of it, then an error), and a POST the node read is never sent again."""
    node = Node(scripts)
    pool = UpstreamPool()
    outcomes: dict[int, Outcome] = {}

    async def worker(first: int) -> None:
        for rid in range(first, len(scripts), WORKERS):
            outcomes[rid] = await call(pool, url, rid, scripts[rid])

    try:
        async with raw_server(node.handle) as url, asyncio.timeout(30):
            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
    finally:
        pool.close()
    for rid, script in enumerate(scripts):
        check(rid, script, node.reads[rid], outcomes[rid])
