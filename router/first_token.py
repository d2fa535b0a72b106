"""Waiting for a stream's first token before anything reaches the client.

Nothing the client can use comes before a stream's first token (content or a tool call), so the
client's status line and headers wait for it: until then a node that closes, stalls, sends
garbage or an error is a failed attempt the forwarder moves on from, as if it had never
answered, and the client knows nothing of it. The wait costs the client nothing (it could show
nothing earlier). The answer reader (:class:`node_protocol.events.AnswerReader`) says when the
first token, or a proper end with none, has come.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

from node_protocol.events import AnswerReader, Surface
from node_protocol.upstream import UpstreamResponse
from node_protocol.wire import STREAM_CUT_CODE
from router.failover import Failure, NoFirstToken, error_outcome

# Bytes read from a node without a token in them before it counts as sending garbage.
MAX_BEFORE_FIRST_TOKEN = 1024 * 1024
_CUT_CODE = STREAM_CUT_CODE.encode()


def _error_event(data: bytes) -> bytes:
    """The JSON of the first error event in ``data`` (SSE or NDJSON)."""
    for line in data.split(b"\n"):
        payload = line.removeprefix(b"data:").strip()
        if payload.startswith(b"{") and b"error" in payload:
            return payload
    return b""


async def first_token(
    upstream: UpstreamResponse,
    answer: AnswerReader,
    feed: Callable[[bytes, float], None],
    node: str,
) -> bytes | Failure:
    """Read a stream until ``answer`` (fed through ``feed``) shows a first token or a proper
    end: the bytes read, to be relayed. Or the failure it is: closed, stalled or garbage before
    it (:class:`NoFirstToken`), or an error event in its place (read as an error body)."""
    if answer.surface is Surface.NONE:
        return b""  # nothing to read tokens from: relayed as it comes
    tokens, size = answer.tokens, 0
    parts: list[bytes] = []
    while True:
        try:
            piece = await upstream.readany()
        except TimeoutError:
            return NoFirstToken("timeout", f"{node} sent no token in time")
        except OSError as exc:
            return NoFirstToken("closed", f"{node} broke off before its first token: {exc!r}")
        if not piece:
            answer.end(perf_counter())
            if answer.finished and parts:
                return b"".join(parts)  # a whole answer with no token in it
            break
        feed(piece, perf_counter())
        parts.append(piece)
        if answer.tokens > tokens or answer.finished:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if answer.error is not None:
            break
        size += len(piece)
        if size > MAX_BEFORE_FIRST_TOKEN:
            return NoFirstToken("garbage", f"{node} sent {size} bytes and no token")
    data = b"".join(parts)
    if _CUT_CODE in data:
        return NoFirstToken("closed", f"{node}'s backend broke off before its first token")
    if answer.error is not None:
        return error_outcome(500, {}, _error_event(data), node)
    return NoFirstToken("closed", f"{node} ended its stream before its first token")
