"""When a kept connection carries the next request, and when a request goes out again: never
to a node that may have started on it. Raw nodes on real sockets log what they read."""

from __future__ import annotations

import asyncio

import pytest

from node_protocol.upstream import CallLimits, ClosedBeforeAnswer, UpstreamPool

from .raw_node import (
    NodeLog,
    logging_node,
    ok,
    raw_server,
    read_request,
    request_line,
    wait_until,
)

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


STREAM = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntoken\r\n0\r\n\r\n"
CLOSE_LAG_S = 0.05  # after its stream's end, before a node that closes such connections does


async def known(pool: UpstreamPool, url: str, keeps: bool) -> None:
    """Until the pool knows whether the node keeps connections after streams."""
    await wait_until(lambda: pool._streams.keeps(pool.origin(url)) is keeps)


class TestAfterStreams:
    async def test_a_post_right_after_a_stream_the_node_will_close_goes_on_a_new_connection(
        self, pool: UpstreamPool
    ) -> None:
        """A node that closes each connection a moment after a streamed answer, its headers
        saying it is kept alive (llama.cpp's server does): a POST sent at once after the
        stream never goes on that connection; once the node is known, the client closes such
        connections itself. Every request is answered, and read once."""
        log = NodeLog()
        after_stream: list[str] = []

        async def closing_after_streams(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            number = len(log.closed)
            log.closed.append(asyncio.Event())
            while True:
                line = request_line(await read_request(reader))
                log.reads.append((number, line))
                if not line.startswith(b"POST /s"):
                    writer.write(ok(b"answer"))
                    continue
                writer.write(STREAM)
                try:
                    got = await asyncio.wait_for(reader.read(1), CLOSE_LAG_S)
                    after_stream.append("request" if got else "closed by the client")
                except TimeoutError:
                    after_stream.append("closed by the node")
                writer.close()
                return

        async with raw_server(closing_after_streams) as url:
            for i in range(3):
                assert await call(pool, url, f"/s{i}") == b"token"
                assert await call(pool, url, f"/p{i}") == b"answer"
                if i == 0:
                    await known(pool, url, keeps=False)
            await asyncio.sleep(CLOSE_LAG_S * 2)
        assert after_stream == ["closed by the node"] + ["closed by the client"] * 2
        assert sorted(line for _, line in log.reads) == sorted(
            f"POST /{p}{i} HTTP/1.1".encode() for p in "sp" for i in range(3)
        )

    async def test_a_node_seen_to_keep_connections_after_streams_has_them_reused(
        self, pool: UpstreamPool
    ) -> None:
        """After a first stream the connection is watched, not reused; once the node is seen
        to keep it open it carries requests, streams or not, like any kept connection."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return STREAM if request_line(request).startswith(b"POST /s") else ok(b"answer")

        async with raw_server(logging_node(log, answer)) as url:
            assert await call(pool, url, "/s0") == b"token"
            assert await call(pool, url, "/p0") == b"answer"  # a new connection
            await known(pool, url, keeps=True)
            for i in range(1, 4):
                assert await call(pool, url, f"/s{i}") == b"token"
                assert await call(pool, url, f"/p{i}") == b"answer"
        assert log.connections == 2
