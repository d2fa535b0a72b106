"""A raw asyncio HTTP/1.1 server on port 0 for the client's tests: it writes whatever bytes a
test hands it, the way real servers misbehave (interim answers, early closes, garbage)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[str]:
    """Serve each connection with ``handle``; yields the base URL."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handle(reader, writer)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """A request's head and the length of the body it announces."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, length


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """A whole request, head and body."""
    head, length = await read_head(reader)
    return head + await reader.readexactly(length)


async def wait_until(cond: Callable[[], bool], within_s: float = 3.0) -> None:
    """Until a condition on the client's own state holds (nothing to wait on from outside)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def request_line(request: bytes) -> bytes:
    return request.split(b"\r\n", 1)[0]


def answering(raw: bytes, *, close: bool = True) -> Handler:
    """A node that reads one request, writes ``raw`` and (``close``) hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return handle


def ok(body: bytes, *extra: bytes) -> bytes:
    """A 200 answer with a Content-Length, kept alive."""
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class NodeLog:
    """What a raw node read: each request's line with the number of its connection (from 0),
    and an event per connection set when the client closed it."""

    reads: list[tuple[int, bytes]] = field(default_factory=list)
    closed: list[asyncio.Event] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.closed)

    def times_read(self, line: bytes) -> int:
        return sum(1 for _, seen in self.reads if seen == line)


Answer = Callable[[int, int, bytes], Awaitable[bytes | list[bytes] | None]]
PAUSE_S = 0.02  # between pieces of one answer, so they reach the client in separate reads


def logging_node(log: NodeLog, answer: Answer) -> Handler:
    """A node that reads requests one after another on each connection and writes what
    ``answer(connection, index on it, request)`` gives (a list: piece by piece, a moment
    apart), or hangs up when that is ``None``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(log.closed)
        closed = asyncio.Event()
        log.closed.append(closed)
        index = 0
        while True:
            try:
                request = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                closed.set()
                return
            log.reads.append((number, request_line(request)))
            raw = await answer(number, index, request)
            if raw is None:
                writer.close()
                return
            for i, piece in enumerate([raw] if isinstance(raw, bytes) else raw):
                if i:
                    await asyncio.sleep(PAUSE_S)
                writer.write(piece)
                await writer.drain()
            index += 1

    return handle
