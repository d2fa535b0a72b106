"""How an answer is framed, which decides how a cut stream is told to its client.

These framings pass through the agent: OpenAI SSE (``data: {json}``, errors as
``{"error": {...}}``), native SSE (TGI ``/generate_stream``, Triton ``generate_stream``: errors
as ``{"error": "..."}``), Ollama's NDJSON (one object a line, errors as a final
``{"error": "..."}`` line), and the named-event SSE of Anthropic Messages and OpenAI Responses
(errors as their ``error`` events, :mod:`node_protocol.surface_errors`). What the answer says
(its tokens, counts and end) is read by :class:`node_protocol.events.AnswerReader`, which the
router uses too. The error that tells of a cut carries :data:`~node_protocol.wire.STREAM_CUT_CODE`
(OpenAI ``code``, else ``error_type``), so that a router can tell it from the backend's own errors
and resume the answer elsewhere.
"""

from __future__ import annotations

import enum

import orjson

from node_protocol.events import Surface
from node_protocol.surface_errors import anthropic_error_event, responses_error_event
from node_protocol.wire import STREAM_CUT_CODE


class Framing(enum.Enum):
    """How an answer is framed, which decides the mid-stream error."""

    BODY = "body"  # one JSON (or other) body: no way to say "cut" inside it
    SSE = "sse"  # OpenAI server-sent events
    NATIVE_SSE = "native_sse"  # TGI / Triton server-sent events
    NDJSON = "ndjson"  # Ollama's native stream
    ANTHROPIC_SSE = "anthropic_sse"  # Anthropic Messages events
    RESPONSES_SSE = "responses_sse"  # OpenAI Responses events

    @property
    def streamed(self) -> bool:
        return self is not Framing.BODY


_SSE_BY_SURFACE = {
    Surface.ANTHROPIC: Framing.ANTHROPIC_SSE,
    Surface.RESPONSES: Framing.RESPONSES_SSE,
}


def framing_of(content_type: str, *, native: bool, surface: Surface = Surface.NONE) -> Framing:
    """The framing of an answer from its Content-Type and the API it came from."""
    ctype = content_type.lower()
    if ctype.startswith("text/event-stream"):
        if surface in _SSE_BY_SURFACE:
            return _SSE_BY_SURFACE[surface]
        return Framing.NATIVE_SSE if native else Framing.SSE
    if ctype.startswith("application/x-ndjson"):
        return Framing.NDJSON
    return Framing.BODY


def cut_event(framing: Framing, message: str, last: bytes) -> bytes | None:
    """The bytes that tell a streaming client its answer was cut, in its own API's shape.

    None for a plain body (no way to say it inside: the caller drops the connection instead).
    """
    if framing is Framing.SSE:
        error: dict[str, object] = {
            "error": {
                "message": message,
                "type": "api_error",
                "param": None,
                "code": STREAM_CUT_CODE,
            }
        }
        # End a half-sent event first so the error event parses on its own.
        lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
        return lead + b"data: " + orjson.dumps(error) + b"\n\n"
    if framing is Framing.NATIVE_SSE:
        native = {"error": message, "error_type": STREAM_CUT_CODE}
        lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
        return lead + b"data: " + orjson.dumps(native) + b"\n\n"
    if framing is Framing.ANTHROPIC_SSE or framing is Framing.RESPONSES_SSE:
        lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
        if framing is Framing.ANTHROPIC_SSE:
            return lead + anthropic_error_event(message, "api_error")
        return lead + responses_error_event(message, STREAM_CUT_CODE)
    if framing is Framing.NDJSON:
        lead = b"" if not last or last.endswith(b"\n") else b"\n"
        return lead + orjson.dumps({"error": message, "error_type": STREAM_CUT_CODE}) + b"\n"
    return None
