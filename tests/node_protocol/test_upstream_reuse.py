"""When a kept connection carries the next request, and when a request goes out again: never
to a node that may have started on it. Raw nodes on real sockets log what they read."""

from __future__ import annotations

import asyncio

import pytest

from node_protocol.upstream import CallLimits, ClosedBeforeAnswer, UpstreamPool

from .raw_node import NodeLog, logging_node, ok, raw_server, read_request, request_line

LIMITS = CallLimits(connect_s=2.0, idle_s=2.0, total_s=10.0)


async def call(pool: UpstreamPool, url: str, path: str, method: str = "POST") -> bytes:
    body = b"{}" if method == "POST" else None
    resp = await pool.request(method, url, path, body, {}, LIMITS)
    try:
        return await resp.read()
    finally:
        resp.close()


async def second_dropped(conn: int, index: int, request: bytes) -> bytes | None:
    """Answers each connection's first request; reads the second and hangs up unanswered."""
    return ok(b"answer %d.%d" % (conn, index)) if index == 0 else None


class TestNeverTwice:
    async def test_a_post_the_node_read_and_then_dropped_is_not_sent_again(
        self, pool: UpstreamPool
    ) -> None:
        """A kept connection closed after the node read a POST, before any answer: the POST
        fails as ClosedBeforeAnswer and the node read it once."""
        log = NodeLog()
        async with raw_server(logging_node(log, second_dropped)) as url:
            assert await call(pool, url, "/first") == b"answer 0.0"
            with pytest.raises(ClosedBeforeAnswer):
                await call(pool, url, "/generate")
        assert log.times_read(b"POST /generate HTTP/1.1") == 1

    async def test_a_post_dropped_on_a_new_connection_is_not_sent_again(
        self, pool: UpstreamPool
    ) -> None:
        log = NodeLog()

        async def dropping(conn: int, index: int, request: bytes) -> None:
            return None

        async with raw_server(logging_node(log, dropping)) as url:
            with pytest.raises(ClosedBeforeAnswer):
                await call(pool, url, "/generate")
        assert log.reads == [(0, b"POST /generate HTTP/1.1")]

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_an_idempotent_request_dropped_unanswered_goes_once_more(
        self, pool: UpstreamPool, method: str
    ) -> None:
        """The same drop, on a method that may run twice: it goes again on a new connection."""
        log = NodeLog()
        line = f"{method} /models HTTP/1.1".encode()
        async with raw_server(logging_node(log, second_dropped)) as url:
            assert await call(pool, url, "/first") == b"answer 0.0"
            assert await call(pool, url, "/models", method) == b"answer 1.0"
        assert log.reads == [(0, b"POST /first HTTP/1.1"), (0, line), (1, line)]

    async def test_a_kept_connection_the_node_closed_just_now_is_not_written_to(
        self, pool: UpstreamPool
    ) -> None:
        """The node hangs up right after answering; the next POST, sent at once, goes on a new
        connection (the close is seen before writing) and is read once."""
        log = NodeLog()

        async def hang_up_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            number = len(log.closed)
            log.closed.append(asyncio.Event())
            log.reads.append((number, request_line(await read_request(reader))))
            writer.write(ok(b"answer %d" % number))
            writer.close()  # at once, with the answer

        async with raw_server(hang_up_after) as url:
            for i in range(3):
                assert await call(pool, url, f"/{i}") == b"answer %d" % i
        assert [n for n, _ in log.reads] == [0, 1, 2]


class TestIdleConnections:
    async def test_kept_connections_idle_past_the_expiry_are_closed_in_the_background(
        self,
    ) -> None:
        """A connection idle for ``keep_idle_s`` is closed without a request coming; the next
        request opens a new one."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return ok(b"answer %d" % conn)

        pool = UpstreamPool(keep_idle_s=0.2)
        try:
            async with raw_server(logging_node(log, answer)) as url:
                assert await call(pool, url, "/a") == b"answer 0"
                async with asyncio.timeout(2):
                    await log.closed[0].wait()
                assert await call(pool, url, "/b") == b"answer 1"
        finally:
            pool.close()

    async def test_bytes_from_the_node_on_an_idle_kept_connection_retire_it(
        self, pool: UpstreamPool
    ) -> None:
        """The start of an answer no request asked for arrives on an idle connection: it is
        closed, and the next request gets its own answer on a new one."""
        log = NodeLog()
        stray = b"HTTP/1.1 200 OK\r\nContent-Le"

        async def answer(conn: int, index: int, request: bytes) -> list[bytes]:
            return [ok(b"answer %d.%d" % (conn, index)), stray] if conn == 0 else [ok(b"fresh")]

        async with raw_server(logging_node(log, answer)) as url:
            assert await call(pool, url, "/a") == b"answer 0.0"
            async with asyncio.timeout(2):
                await log.closed[0].wait()  # the client hung up on the stray bytes
            assert await call(pool, url, "/b") == b"fresh"

    async def test_forget_closes_a_gone_nodes_kept_connections(self, pool: UpstreamPool) -> None:
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return ok(b"answer %d" % conn)

        async with raw_server(logging_node(log, answer)) as url:
            assert await call(pool, url, "/a") == b"answer 0"
            pool.forget(url)
            async with asyncio.timeout(2):
                await log.closed[0].wait()
            assert pool.origin(url) not in pool._idle
            assert await call(pool, url, "/b") == b"answer 1"  # it may come back


class TestOneAnswerPerRequest:
    async def test_an_answer_read_to_its_end_never_reads_its_connections_next_answer(
        self, pool: UpstreamPool
    ) -> None:
        """Once an answer has ended and its connection carries the next request, the first
        answer reads as ended and cannot take the next one's body."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return ok(b"answer %d" % index)

        async with raw_server(logging_node(log, answer)) as url:
            first = await pool.post(url, "/1", b"{}", {}, LIMITS)
            assert await first.readany() == b"answer 0"
            assert await first.readany() == b""  # its end: the connection goes back
            second = await pool.post(url, "/2", b"{}", {}, LIMITS)
            first.push_to(lambda piece: True)  # would swallow the second's pieces
            assert await first.readany() == b""
            assert first.finished
            assert await second.read() == b"answer 1"
            second.close()
        assert log.connections == 1
