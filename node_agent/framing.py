"""What the proxy needs to know about a streamed answer's framing, without parsing it.

Three framings pass through the agent (reference/backends.md): OpenAI SSE (``data: {json}``,
errors as ``{"error": {...}}``), native SSE (TGI ``/generate_stream``, Triton
``generate_stream``: errors as ``{"error": "..."}``) and Ollama's NDJSON (one object a line,
errors as a final ``{"error": "..."}`` line). Output tokens are counted by scanning the raw bytes
for non-empty text fields, corrected at the end by an exact count when the backend sends one
(OpenAI ``usage.completion_tokens``, Ollama ``eval_count``, TGI ``details.generated_tokens``).
"""

from __future__ import annotations

import enum
import re

import orjson

# One streamed piece of text in each API: OpenAI delta ``content`` / completion ``text``, TGI
# ``token.text``, Ollama ``message.content`` / ``response``, Triton ``text_output``.
_TEXT_FIELDS = (b'"content":', b'"text":', b'"response":', b'"text_output":')
_TOKEN_MARKS = tuple(f + sep + b'"' for f in _TEXT_FIELDS for sep in (b"", b" "))
_EMPTY_MARKS = tuple(m + b'"' for m in _TOKEN_MARKS)
_EXACT_RE = re.compile(rb'"(?:completion_tokens|eval_count|generated_tokens)"\s*:\s*(\d+)')


class Framing(enum.Enum):
    """How an answer is framed, which decides token counting and the mid-stream error."""

    BODY = "body"  # one JSON (or other) body: nothing to count while relaying
    SSE = "sse"  # OpenAI server-sent events
    NATIVE_SSE = "native_sse"  # TGI / Triton server-sent events
    NDJSON = "ndjson"  # Ollama's native stream

    @property
    def streamed(self) -> bool:
        return self is not Framing.BODY


def framing_of(content_type: str, *, native: bool) -> Framing:
    """The framing of an answer from its Content-Type and the API it came from."""
    ctype = content_type.lower()
    if ctype.startswith("text/event-stream"):
        return Framing.NATIVE_SSE if native else Framing.SSE
    if ctype.startswith("application/x-ndjson"):
        return Framing.NDJSON
    return Framing.BODY


def count_content_events(chunk: bytes) -> int:
    """Roughly the tokens in a streamed chunk: events with a non-empty text field."""
    n = 0
    for mark in _TOKEN_MARKS:
        n += chunk.count(mark)
    for mark in _EMPTY_MARKS:
        n -= chunk.count(mark)
    return max(0, n)


def usage_tokens(tail: bytes) -> int | None:
    """The last exact output-token count in the end of a body, if the backend sent one."""
    found = _EXACT_RE.findall(tail)
    return int(found[-1]) if found else None


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
                "code": "backend_stream_cut",
            }
        }
        # End a half-sent event first so the error event parses on its own.
        lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
        return lead + b"data: " + orjson.dumps(error) + b"\n\n"
    if framing is Framing.NATIVE_SSE:
        native = {"error": message, "error_type": "backend_stream_cut"}
        lead = b"" if not last or last.endswith(b"\n\n") else b"\n\n"
        return lead + b"data: " + orjson.dumps(native) + b"\n\n"
    if framing is Framing.NDJSON:
        lead = b"" if not last or last.endswith(b"\n") else b"\n"
        return lead + orjson.dumps({"error": message}) + b"\n"
    return None
