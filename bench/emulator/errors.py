"""One error type for every face, rendered once per face by its middleware.

A handler raises :class:`FaceError` with the status and message the real backend answers,
plus the fields its body shape needs (``kind``: vLLM's/OpenAI's ``type``, TGI's
``error_type``; ``param``; ``code``). :func:`face_middleware` catches it, and aiohttp's own
404/405, and hands them to the face's renderers, so each face has exactly one place that
knows its error body.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


class FaceError(Exception):
    """An error the backend answers with ``status``; the face renders the body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.kind, self.param, self.code = kind, param, code


Render = Callable[[web.Request, FaceError], web.StreamResponse]
Unmatched = Callable[[web.Request, int], web.StreamResponse]


def face_middleware(render: Render, unmatched: Unmatched) -> Middleware:
    """A middleware answering :class:`FaceError` with ``render`` and unknown routes / wrong
    methods (404 / 405) with ``unmatched``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except FaceError as exc:
            return render(request, exc)
        except web.HTTPNotFound:
            return unmatched(request, 404)
        except web.HTTPMethodNotAllowed:
            return unmatched(request, 405)

    return middleware
