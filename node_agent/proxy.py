"""The thin streaming proxy from the agent to its backend.

The body is forwarded as read, the answer relayed chunk by chunk as it arrives (never
buffered), with the seed's header mapping: ``X-Octopus-Tenant-Id`` → ``X-Tenant-Id`` and
``X-Octopus-Correlation-Id`` → ``X-Correlation-Id`` (empty when missing), and
``X-Octopus-Session-Id`` passed through. Requests in flight are counted exactly; a client that
goes away closes the upstream response so the backend stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import orjson
from aiohttp import web

from .errors import BackendTimeout, BackendUnreachable
from .traffic import TrafficStats

log = logging.getLogger("node_agent.proxy")

# Response headers worth keeping; hop-by-hop ones (Transfer-Encoding, Connection) never are.
_PASS_BACK = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Cache-Control",
    "Retry-After",
    "X-Request-Id",
    "x-should-retry",
)
_USAGE_RE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_TOKEN_MARKS = (b'"content":"', b'"content": "', b'"text":"', b'"text": "')
_EMPTY_MARKS = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""')


def count_content_events(chunk: bytes) -> int:
    """Roughly the tokens in an SSE chunk: deltas with non-empty ``content`` / ``text``."""
    n = 0
    for mark in _TOKEN_MARKS:
        n += chunk.count(mark)
    for mark in _EMPTY_MARKS:
        n -= chunk.count(mark)
    return max(0, n)


def usage_tokens(tail: bytes) -> int | None:
    """The last ``usage.completion_tokens`` in the end of a body, if the backend sent one."""
    found = _USAGE_RE.findall(tail)
    return int(found[-1]) if found else None


class BackendProxy:
    """Forwards requests to one backend over a pooled client session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        backend_url: str,
        stats: TrafficStats,
        *,
        api_key: str | None,
        first_byte_timeout_s: float,
        idle_timeout_s: float,
        total_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._session = session
        self._base = backend_url.rstrip("/")
        self._stats = stats
        self._api_key = api_key
        self._first_byte_s = first_byte_timeout_s
        self._idle_s = idle_timeout_s
        # sock_read never fires before our own first-byte and idle timers do.
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s,
            connect=connect_timeout_s,
            sock_connect=connect_timeout_s,
            sock_read=max(first_byte_timeout_s, idle_timeout_s),
        )

    def upstream_headers(self, request: web.Request) -> dict[str, str]:
        src = request.headers
        headers = {
            "Accept-Encoding": "identity",
            "X-Tenant-Id": src.get("X-Octopus-Tenant-Id") or src.get("X-Tenant-Id") or "",
            "X-Correlation-Id": (
                src.get("X-Octopus-Correlation-Id") or src.get("X-Correlation-Id") or ""
            ),
        }
        for name in ("Content-Type", "Accept", "X-Octopus-Session-Id"):
            value = src.get(name)
            if value is not None:
                headers[name] = value
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        elif "Authorization" in src:
            headers["Authorization"] = src["Authorization"]
        return headers

    async def forward(self, request: web.Request, path: str) -> web.StreamResponse:
        """Send the request to ``{backend}{path}`` and relay the answer as it comes."""
        body = await request.read() if request.body_exists else None
        url = self._base + path
        if request.query_string:
            url = f"{url}?{request.query_string}"
        stats = self._stats
        stats.enter()
        failed = True
        try:
            upstream = await self._open(request.method, url, body, self.upstream_headers(request))
            finished = False
            try:
                resp, complete = await self._relay(request, upstream)
                finished = True
                failed = not complete or upstream.status >= 500
                return resp
            finally:
                if finished:
                    upstream.release()
                else:  # cancelled (client gone) or failed: drop the connection, stop the GPU
                    upstream.close()
        finally:
            stats.leave()
            stats.hint(failure=failed)

    async def _open(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self._first_byte_s):
                return await self._session.request(
                    method, url, data=body, headers=headers, timeout=self._timeout
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise BackendUnreachable(f"backend connect timeout: {url}") from exc
        except TimeoutError as exc:
            raise BackendTimeout(
                f"backend sent no response within {self._first_byte_s:g}s: {url}"
            ) from exc
        except aiohttp.ClientError as exc:
            log.warning("backend unreachable at %s: %s", url, exc)
            raise BackendUnreachable(f"backend unreachable: {exc}") from exc

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> tuple[web.StreamResponse, bool]:
        """Relay the answer; the flag is False when the backend stalled or dropped mid-answer."""
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name in _PASS_BACK:
            value = upstream.headers.get(name)
            if value is not None:
                resp.headers[name] = value
        is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        count = is_sse and upstream.status == 200
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        counted = 0
        previous = last = b""
        try:
            async with asyncio.timeout(self._idle_s) as idle:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                    idle.reschedule(loop.time() + self._idle_s)
                    if count:
                        n = count_content_events(chunk)
                        counted += n
                        self._stats.add_tokens(n)
                    previous, last = last, chunk
            if upstream.status == 200:
                usage = usage_tokens(previous[-1024:] + last)
                if usage is not None:
                    self._stats.add_tokens(usage - counted)
            await resp.write_eof()
        except ConnectionResetError:
            # The client went away (the handler is usually cancelled first; this is the case
            # where the write noticed it): stop the backend generating for nobody.
            log.debug("client left %s mid-response", request.path)
            upstream.close()
            return resp, True
        except (TimeoutError, aiohttp.ClientError) as exc:
            await self._cut(request, resp, is_sse, last, exc)
            return resp, False
        return resp, True

    async def _cut(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        is_sse: bool,
        last: bytes,
        exc: BaseException,
    ) -> None:
        """The backend stalled or dropped mid-answer: say so on a stream, else cut the body."""
        reason = "backend timed out" if isinstance(exc, TimeoutError) else "backend dropped"
        log.warning("%s mid-response on %s: %r", reason, request.path, exc)
        if is_sse:
            event = {
                "error": {
                    "message": f"{reason} after the stream started",
                    "type": "api_error",
                    "param": None,
                    "code": "backend_stream_cut",
                }
            }
            # End a half-sent event first so the error event parses on its own.
            lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
            try:
                await resp.write(lead + b"data: " + orjson.dumps(event) + b"\n\n")
                await resp.write_eof()
            except ConnectionError:
                pass
        elif request.transport is not None:
            # No way to signal an error inside a JSON body: end the connection early so the
            # client sees a truncated response rather than a complete-looking one.
            request.transport.close()
