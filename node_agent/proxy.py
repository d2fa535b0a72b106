"""The thin streaming proxy from the agent to its backend: one pass-through for every route.

The body is forwarded as read, the answer relayed chunk by chunk as it arrives (never
buffered), with the platform's header mapping: ``X-Octopus-Tenant-Id`` → ``X-Tenant-Id`` and
``X-Octopus-Correlation-Id`` → ``X-Correlation-Id`` (empty when missing), and
``X-Octopus-Session-Id`` passed through. The OpenAI routes and the backends' native ones (Ollama
NDJSON, TGI and Triton SSE) share this code; only the framing of a cut stream differs
(:mod:`node_agent.framing`). Requests in flight are counted exactly; a client that goes away
closes the upstream response so the backend stops generating. A route that translates between
APIs (OpenAI on Triton, :mod:`node_agent.triton_openai`) holds the backend's answer open with
:meth:`BackendProxy.opened` and gets the same accounting, headers and cancellation. Each prompt
the backend takes is recorded on the node's prompt caches (:mod:`node_agent.prompt_caches`).

A router that believes the node has a free slot may ask ``X-Router-Slot-Check: N`` (the
model's parallel slots, ``SLOT_CHECK_HEADER``): with N or more requests for the same model
already in flight (counted per model: :meth:`TrafficStats.model_key`) the agent does not call
the backend but answers 503 ``node_busy`` at once, with ``X-Node-Busy: <in flight>`` (all of
the node's). Such an answer is not counted in flight, not observed in the request metrics and
not a backend failure. The header is never passed on. A backend that must not get more than a
few requests at once has each request wait its turn (:mod:`node_agent.gate`) after it is
counted in flight.

The calls go out on the router's lean HTTP/1.1 client (:mod:`node_protocol.upstream`): aiohttp's
client call cost more than all of the agent's own work on a short request. Like the aiohttp
session it replaced (``auto_decompress=False``), it passes the body through undecoded, so
``Content-Encoding`` and ``Content-Length`` go back as the backend sent them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from aiohttp import web

from node_protocol.events import AnswerReader, Surface, surface_of
from node_protocol.upstream import CallLimits, ConnectTimeout, UpstreamPool, UpstreamResponse
from node_protocol.wire import SLOT_CHECK_HEADER

from .backend_answer import Track, Upstream
from .errors import AgentError, BackendTimeout, BackendUnreachable, SlotsTaken
from .framing import Framing, cut_event, framing_of
from .gate import BackendGate
from .metrics import CLIENT_GONE, RequestMetrics
from .prompt_caches import Arrival, PromptCaches
from .traffic import AnswerTokens, TrafficStats

__all__ = ["BackendProxy", "Exchange", "Upstream", "route_label"]  # Upstream: for handlers

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
    # KServe v2 binary tensor data: where the JSON header ends in a binary answer.
    "Inference-Header-Content-Length",
    # TGI's timing and token headers on /generate.
    "x-compute-type",
    "x-compute-time",
    "x-compute-characters",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)

_PASS_BACK_KEYS = tuple((name, name.lower()) for name in _PASS_BACK)  # the client's are lower-case

# Request headers worth passing on besides the renamed ones.
_PASS_ON = ("Content-Type", "Accept", "X-Octopus-Session-Id", "Inference-Header-Content-Length")


@dataclass(slots=True)
class Exchange:
    """A whole (non-streamed) answer from the backend."""

    status: int
    content_type: str
    body: bytes


def route_label(request: web.Request) -> str:
    """The route template the request matched (bounded cardinality), else its path."""
    resource = request.match_info.route.resource
    return request.path if resource is None else resource.canonical


class BackendProxy:
    """Forwards requests to one backend over a pool of keep-alive connections.

    Connect within ``connect_timeout_s`` (else the backend is unreachable), headers within
    ``first_byte_timeout_s``, each next piece of a relayed body within ``idle_timeout_s``, all
    of it within ``total_timeout_s``.
    """

    def __init__(
        self,
        pool: UpstreamPool,
        backend_url: str,
        stats: TrafficStats,
        *,
        api_key: str | None,
        first_byte_timeout_s: float,
        idle_timeout_s: float,
        total_timeout_s: float,
        connect_timeout_s: float,
        metrics: RequestMetrics | None = None,
        prompts: PromptCaches | None = None,
        gate: BackendGate | None = None,
    ) -> None:
        self._pool = pool
        self._prompts = prompts
        self._gate = gate or BackendGate(lambda: None)
        self._base = backend_url.rstrip("/")
        pool.origin(self._base)  # a bad URL fails here, at start
        self._stats = stats
        self._metrics = metrics
        self._api_key = api_key
        self._first_byte_s = first_byte_timeout_s
        self._idle_s = idle_timeout_s
        # The client's own idle bound waits for the headers; reads are paced after.
        self._limits = CallLimits(
            connect_s=connect_timeout_s, idle_s=first_byte_timeout_s, total_s=total_timeout_s
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
        for name in _PASS_ON:
            value = src.get(name)
            if value is not None:
                headers[name] = value
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        elif "Authorization" in src:
            headers["Authorization"] = src["Authorization"]
        return headers

    @contextmanager
    def _track(self, request: web.Request, path: str, body: bytes | None) -> Iterator[Track]:
        """Count the request in flight (under its model: ``path`` and ``body`` as the backend
        gets them) and observe it once it ends, however it ends.

        A router's slot check that finds every slot of the model taken raises :class:`SlotsTaken`
        first, with nothing counted; the check and the count go together, with no ``await``
        between them, so two requests cannot both take the last slot.
        """
        stats = self._stats
        key = stats.model_key(path, body)
        slots = _slot_check(request)
        if slots is not None and stats.in_flight_for(key) >= slots:
            raise SlotsTaken(stats.in_flight_for(key), slots, stats.in_flight)
        track = Track(route_label(request), time.perf_counter())
        stats.enter(key)
        try:
            yield track
        except AgentError as exc:
            track.status = exc.status
            raise
        except asyncio.CancelledError:
            track.status = CLIENT_GONE
            raise
        finally:
            stats.leave(key)
            stats.hint(failure=track.failed)
            if self._metrics is not None:
                # An answer without a body had its first byte with its headers.
                first_byte = track.headers_s if track.first_byte_s is None else track.first_byte_s
                self._metrics.observe(track.path, track.status, track.since_start(), first_byte)

    async def forward(
        self,
        request: web.Request,
        path: str,
        *,
        native: bool = False,
        error_body: Callable[[int, bytes], bytes] | None = None,
    ) -> web.StreamResponse:
        """Send the request to ``{backend}{path}`` and relay the answer as it comes.

        ``native``: the route is the backend's own API (a cut stream ends in its error shape).
        ``error_body``: rewrites an error answer's body (status, body) into the route's envelope.
        """
        body = await request.read() if request.body_exists else None
        surface = surface_of(path)
        query = request.rel_url.raw_query_string  # as the client encoded it
        target = f"{path}?{query}" if query else path
        with self._track(request, path, body) as track:
            async with self._gate.hold():
                upstream = await self._open(
                    request.method, target, body, self.upstream_headers(request)
                )
                track.status = upstream.status
                track.headers_s = track.since_start()
                arrival = await self._arrive(request, upstream.status)
                upstream.pace(self._idle_s)
                try:
                    if error_body is not None and upstream.status >= 400:
                        track.failed = upstream.status >= 500
                        return await _reshaped(upstream, error_body)
                    resp, complete = await self._relay(
                        request, upstream, track, native, surface, arrival
                    )
                    track.failed = not complete or upstream.status >= 500
                    return resp
                finally:
                    # Back to the pool when read to its end; otherwise (cancelled with the client
                    # gone, cut, failed) the connection is closed and the backend stops generating.
                    upstream.close()

    async def exchange(self, request: web.Request, path: str, body: bytes) -> Exchange:
        """POST a JSON body to ``{backend}{path}`` and read the whole answer (not relayed)."""
        headers = self.upstream_headers(request) | {"Content-Type": "application/json"}
        with self._track(request, path, body) as track:
            async with self._gate.hold():
                upstream = await self._open("POST", path, body, headers)
                track.status = upstream.status
                track.headers_s = track.since_start()
                arrival = await self._arrive(request, upstream.status)
                try:
                    async with asyncio.timeout(self._idle_s):
                        raw = await upstream.read()
                except TimeoutError as exc:
                    raise BackendTimeout(f"backend stalled mid-answer: {path}") from exc
                except OSError as exc:  # UpstreamBroken is one
                    raise BackendUnreachable(f"backend dropped the answer: {exc}") from exc
                finally:
                    upstream.close()
                track.failed = upstream.status >= 500
                if upstream.status == 200:
                    reader = AnswerReader(surface_of(path))
                    reader.read_body(raw, time.perf_counter())
                    self._stats.add_tokens(reader.output_tokens)
                    if arrival is not None:
                        arrival.settle(reader.prompt_tokens, reader.cached_tokens)
                ctype = upstream.headers.get("content-type", "application/json")
                return Exchange(upstream.status, ctype, raw)

    @asynccontextmanager
    async def opened(self, request: web.Request, path: str, body: bytes) -> AsyncIterator[Upstream]:
        """POST a JSON body to ``{backend}{path}`` and hold the answer open for the block.

        Counted in flight and observed like :meth:`forward`, with the same header mapping. The
        connection goes back to the pool when the block read the body to its end; otherwise
        (an error, a cut, a client gone, a cancellation) it is closed, so the backend stops.
        """
        headers = self.upstream_headers(request) | {"Content-Type": "application/json"}
        for name in ("Accept", "Inference-Header-Content-Length"):
            headers.pop(name, None)
        with self._track(request, path, body) as track:
            async with self._gate.hold():
                response = await self._open("POST", path, body, headers)
                track.status = response.status
                track.headers_s = track.since_start()
                await self._arrive(request, response.status)  # no cached counts come back here
                # The handler's reads keep their own first-byte and idle bounds; the client's
                # per-piece bound never fires before those do.
                response.pace(max(self._first_byte_s, self._idle_s))
                upstream = Upstream(
                    response,
                    track,
                    self._stats,
                    first_byte_s=self._first_byte_s,
                    idle_s=self._idle_s,
                )
                try:
                    yield upstream
                finally:
                    response.close()

    async def _arrive(self, request: web.Request, status: int) -> Arrival | None:
        """The engine took the request (200): record its prompt on the node's prompt caches.
        Done once the request is sent, so fingerprinting never delays it."""
        if self._prompts is None or status != 200 or not request.body_exists:
            return None
        body = await request.read()  # read already: aiohttp keeps the bytes
        return self._prompts.arrive(request.path, body, request.match_info.get("model"))

    async def _open(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> UpstreamResponse:
        try:
            return await self._pool.request(method, self._base, path, body, headers, self._limits)
        except ConnectTimeout as exc:
            raise BackendUnreachable(f"backend connect timeout: {self._base}{path}") from exc
        except TimeoutError as exc:
            raise BackendTimeout(
                f"backend sent no response within {self._first_byte_s:g}s: {self._base}{path}"
            ) from exc
        except OSError as exc:  # refused, reset, UpstreamBroken
            log.warning("backend unreachable at %s%s: %s", self._base, path, exc)
            raise BackendUnreachable(f"backend unreachable: {exc}") from exc

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        track: Track,
        native: bool,
        surface: Surface,
        arrival: Arrival | None,
    ) -> tuple[web.StreamResponse, bool]:
        """Relay the answer; the flag is False when the backend stalled or dropped mid-answer.

        Pieces go out as they come; the last one goes with the end of the answer, in one write.
        The engine's prompt counts in it, if any, settle the prompt's ``arrival``.
        """
        found = upstream.headers
        headers = {name: found[key] for name, key in _PASS_BACK_KEYS if key in found}
        resp = web.StreamResponse(
            status=upstream.status, reason=upstream.reason or None, headers=headers
        )
        framing = framing_of(found.get("content-type", ""), native=native, surface=surface)
        tokens = None
        if upstream.status == 200:
            tokens = AnswerTokens(self._stats, surface, streamed=framing.streamed)
        await resp.prepare(request)
        last = b""
        try:
            while chunk := await upstream.readany():  # each wait bounded by the idle timeout
                if tokens is not None:
                    tokens.take(chunk)
                last = chunk
                if upstream.finished:  # the last piece goes out with the end, in one write
                    break
                await resp.write(chunk)
                if track.first_byte_s is None:
                    track.first_byte_s = track.since_start()
            if track.first_byte_s is None and chunk:
                track.first_byte_s = track.since_start()
            if tokens is not None:
                tokens.end(_header_int(found, "x-generated-tokens"))
                if arrival is not None:
                    arrival.settle(tokens.reader.prompt_tokens, tokens.reader.cached_tokens)
            await resp.write_eof(chunk)
        except ConnectionResetError:
            # The client went away (the handler is usually cancelled first; this is the case
            # where the write noticed it): stop the backend generating for nobody.
            log.debug("client left %s mid-response", request.path)
            track.status = CLIENT_GONE
            upstream.close()
            return resp, True
        except (TimeoutError, OSError) as exc:  # the backend's side: UpstreamBroken is one
            await self._cut(request, resp, framing, last, exc)
            return resp, False
        return resp, True

    async def _cut(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        framing: Framing,
        last: bytes,
        exc: BaseException,
    ) -> None:
        """The backend stalled or dropped mid-answer: say so on a stream, else cut the body."""
        reason = "backend timed out" if isinstance(exc, TimeoutError) else "backend dropped"
        log.warning("%s mid-response on %s: %r", reason, request.path, exc)
        event = cut_event(framing, f"{reason} after the stream started", last)
        if event is not None:
            try:
                await resp.write(event)
                await resp.write_eof()
            except ConnectionError:
                pass
        elif request.transport is not None:
            # No way to signal an error inside a JSON body: end the connection early so the
            # client sees a truncated response rather than a complete-looking one.
            request.transport.close()


async def _reshaped(
    upstream: UpstreamResponse, error_body: Callable[[int, bytes], bytes]
) -> web.Response:
    """An error answer with its body rewritten (what is read of it within the idle bound)."""
    try:
        raw = await upstream.read()
    except (OSError, TimeoutError):
        raw = b""
    return web.Response(
        status=upstream.status,
        body=error_body(upstream.status, raw),
        content_type="application/json",
    )


def _slot_check(request: web.Request) -> int | None:
    """The slots a router's ``X-Router-Slot-Check`` asks about; None (no check) unless it is a
    positive decimal integer (at most 9 digits: a bigger one could never find the node full)."""
    value = request.headers.get(SLOT_CHECK_HEADER, "")
    if not (0 < len(value) <= 9 and value.isascii() and value.isdigit()):
        return None
    return int(value) or None


def _header_int(headers: dict[str, str], name: str) -> int | None:
    value = headers.get(name, "")
    return int(value) if value.isdigit() else None
