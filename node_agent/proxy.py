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

from node_protocol.events import AnswerReader, surface_of
from node_protocol.upstream import CallLimits, ConnectTimeout, UpstreamPool, UpstreamResponse
from node_protocol.wire import SLOT_CHECK_HEADER

from .answer_relay import relay_answer, reshaped_error
from .backend_answer import Track, Upstream
from .errors import AgentError, BackendTimeout, BackendUnreachable, SlotsTaken
from .gate import BackendGate
from .metrics import CLIENT_GONE, RequestMetrics
from .prompt_caches import Arrival, PromptCaches
from .traffic import TrafficStats

__all__ = ["BackendProxy", "Exchange", "Upstream", "route_label"]  # Upstream: for handlers

log = logging.getLogger("node_agent.proxy")

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
                        return await reshaped_error(upstream, error_body)
                    resp, complete = await relay_answer(
                        request, upstream, track, self._stats, native, surface, arrival
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


def _slot_check(request: web.Request) -> int | None:
    """The slots a router's ``X-Router-Slot-Check`` asks about; None (no check) unless it is a
    positive decimal integer (at most 9 digits: a bigger one could never find the node full)."""
    value = request.headers.get(SLOT_CHECK_HEADER, "")
    if not (0 < len(value) <= 9 and value.isascii() and value.isdigit()):
        return None
    return int(value) or None
