"""How the client reads each kind of answer HTTP/1.1 allows, against raw nodes on real sockets:
interim answers, answers without a body, trailers, early answers, keep-alive signals."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from node_protocol.upstream import CallLimits, UpstreamBroken, UpstreamPool

from .raw_node import (
    PAUSE_S,
    Handler,
    NodeLog,
    logging_node,
    ok,
    raw_server,
    read_head,
    wait_until,
)

LIMITS = CallLimits(connect_s=2.0, idle_s=2.0, total_s=10.0)
JSON = {"Content-Type": "application/json"}
INTERIM_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERIM_103 = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


async def kept_after_stream(pool: UpstreamPool, url: str) -> None:
    """Until the connection of a streamed answer is among the kept ones (once the node is
    seen to keep it open)."""
    await wait_until(lambda: bool(pool._idle.get(pool.origin(url))))


async def fetch(pool: UpstreamPool, url: str, path: str, method: str = "POST") -> bytes:
    resp = await pool.request(method, url, path, b"{}" if method == "POST" else None, {}, LIMITS)
    try:
        return await resp.read()
    finally:
        resp.close()


class TestInterimAnswers:
    @pytest.mark.parametrize("apart", [False, True], ids=["one-write", "apart"])
    async def test_interim_answers_are_skipped_and_the_final_one_is_returned(
        self, pool: UpstreamPool, apart: bool
    ) -> None:
        """A 100 and a 103 before the answer are dropped with their headers; the answer and
        the next one on the same connection each carry their own request's body."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes | list[bytes]:
            final = ok(b"answer-%d" % index, b"X-Index: %d" % index)
            return [INTERIM_100, INTERIM_103, final] if apart else INTERIM_100 + INTERIM_103 + final

        async with raw_server(logging_node(log, answer)) as url:
            resp = await pool.post(url, "/a", b"{}", JSON, LIMITS)
            assert (resp.status, resp.reason) == (200, "OK")
            assert resp.headers["x-index"] == "0"
            assert "link" not in resp.headers
            assert await resp.read() == b"answer-0"
            resp.close()
            assert await fetch(pool, url, "/b") == b"answer-1"
        assert log.connections == 1

    async def test_a_protocol_switch_nobody_asked_for_is_upstream_broken(
        self, pool: UpstreamPool
    ) -> None:
        """A 101 to a request that asked for no upgrade breaks the connection."""

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\nxyz"

        async with raw_server(logging_node(NodeLog(), answer)) as url:
            with pytest.raises(UpstreamBroken):
                await pool.post(url, "/a", b"{}", JSON, LIMITS)


class TestAnswersWithoutBody:
    async def test_no_content_and_not_modified_answers_keep_the_connection_in_step(
        self, pool: UpstreamPool
    ) -> None:
        """204 and 304 have no body whatever their headers announce; the next answer on the
        connection is read whole."""
        log = NodeLog()
        answers = [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            ok(b"third"),
        ]

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return answers[index]

        async with raw_server(logging_node(log, answer)) as url:
            assert [await fetch(pool, url, f"/{i}") for i in range(3)] == [b"", b"", b"third"]
        assert log.connections == 1

    async def test_an_answer_to_head_has_no_body_and_the_connection_goes_on(
        self, pool: UpstreamPool
    ) -> None:
        """HEAD's answer announces a body it never has; the next request on the connection
        reads its own answer."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            if request.startswith(b"HEAD "):
                return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
            return ok(b"the body")

        async with raw_server(logging_node(log, answer)) as url:
            resp = await pool.request("HEAD", url, "/h", None, {}, LIMITS)
            assert resp.headers["content-length"] == "10"
            assert await resp.read() == b""
            resp.close()
            assert await fetch(pool, url, "/g", "GET") == b"the body"
        assert log.reads == [(0, b"HEAD /h HTTP/1.1"), (0, b"GET /g HTTP/1.1")]

    async def test_a_chunked_answers_trailers_stay_out_of_its_headers(
        self, pool: UpstreamPool
    ) -> None:
        """Trailer fields after a chunked body are not headers; the body and the next answer
        on the connection come whole (it is reused once the node is seen to keep it)."""
        log = NodeLog()
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Checksum: 99\r\n\r\n"
        )

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return chunked if index == 0 else ok(b"next")

        async with raw_server(logging_node(log, answer)) as url:
            resp = await pool.post(url, "/t", b"{}", JSON, LIMITS)
            assert await resp.read() == b"abcde"
            assert "x-checksum" not in resp.headers
            resp.close()
            await kept_after_stream(pool, url)
            assert await fetch(pool, url, "/n") == b"next"
        assert log.connections == 1


class TestKeepAliveSignals:
    @pytest.mark.parametrize(
        "head",
        [b"HTTP/1.1 200 OK\r\nConnection: close", b"HTTP/1.0 200 OK"],
        ids=["connection-close", "http-1.0"],
    )
    async def test_an_answer_that_ends_the_connection_is_not_kept(
        self, pool: UpstreamPool, head: bytes
    ) -> None:
        """``Connection: close``, or HTTP/1.0 without keep-alive: the next request goes on a
        new connection, though the node left this one open."""
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return head + b"\r\nContent-Length: 2\r\n\r\nok"

        async with raw_server(logging_node(log, answer)) as url:
            assert [await fetch(pool, url, "/x") for _ in range(2)] == [b"ok", b"ok"]
        assert log.connections == 2

    async def test_an_http10_answer_with_keep_alive_is_kept(self, pool: UpstreamPool) -> None:
        log = NodeLog()

        async def answer(conn: int, index: int, request: bytes) -> bytes:
            return b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"

        async with raw_server(logging_node(log, answer)) as url:
            assert [await fetch(pool, url, "/x") for _ in range(2)] == [b"ok", b"ok"]
        assert log.connections == 1


class TestEarlyAnswers:
    """A node may answer before it read the whole request (a body too large, say)."""

    BIG = b"x" * (32 * 1024 * 1024)  # more than the sockets' buffers hold

    @staticmethod
    def early(answer_head: bytes) -> Handler:
        """Answers each request once its head is read, then reads its body to the end."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                _, length = await read_head(reader)
                body = b"too large" if length > 1024 else b"small"
                writer.write(answer_head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
                await reader.readexactly(length)

        return handle

    async def test_an_answer_before_the_body_was_read_is_returned(self, pool: UpstreamPool) -> None:
        """The early answer comes back whole while the rest of the request still goes out."""
        node = self.early(b"HTTP/1.1 413 Content Too Large\r\nConnection: close")
        async with raw_server(node) as url:
            resp = await pool.post(url, "/big", self.BIG, JSON, LIMITS)
            assert resp.status == 413
            assert await resp.read() == b"too large"
            resp.close()

    async def test_a_connection_answered_before_its_request_went_out_whole_is_not_kept(
        self, pool: UpstreamPool
    ) -> None:
        """An early answer, kept alive by the node: the next request goes on a new connection,
        since the node might not read the rest of the body it had answered."""
        connections = 0

        async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await self.early(b"HTTP/1.1 413 Content Too Large")(reader, writer)

        async with raw_server(counting) as url:
            resp = await pool.post(url, "/big", self.BIG, JSON, LIMITS)
            assert (resp.status, await resp.read()) == (413, b"too large")
            resp.close()
            assert await fetch(pool, url, "/small") == b"small"
        assert connections == 2


class TestCloseDelimitedBodies:
    async def test_a_close_delimited_body_cut_by_a_reset_is_upstream_broken(
        self, pool: UpstreamPool
    ) -> None:
        """A body that ends with the connection ends only with a clean close: a reset cuts it."""

        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\npart of it")
            await writer.drain()
            await asyncio.sleep(PAUSE_S)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        async with raw_server(reset) as url:
            with pytest.raises(UpstreamBroken):
                await fetch(pool, url, "/x")
