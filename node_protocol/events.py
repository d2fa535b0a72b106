"""Reading a node's answer as it is relayed: its output tokens and when they came, the counts the
backend reports, an error it sent inside the answer, and whether the answer reached its own end.
One reader for the router and the agent, for every API surface they relay. A piece of output
counts as one token; each surface has its own end:

- OpenAI chat: ``choices[].delta`` (``message`` in a body) with ``content``,
  ``reasoning_content``, ``reasoning``, ``refusal`` or ``tool_calls``; a ``finish_reason``, then
  ``data: [DONE]``. OpenAI completions: ``choices[].text``, the same end.
- Ollama: ``message`` ``content``/``thinking``/``tool_calls`` (chat), ``response``/``thinking``
  (generate); ``"done": true``.
- TGI native: ``token.text``; the event whose ``details`` or ``generated_text`` is set.
- Triton generate: ``text_output``; no end marker: the stream's body ends.
- Anthropic Messages and OpenAI Responses: see :mod:`node_protocol.surface_events`.

Exact counts win over the pieces counted: OpenAI ``usage`` (``completion_tokens``,
``prompt_tokens``, ``prompt_tokens_details.cached_tokens``) and llama.cpp's ``timings``
(``cache_n``, ``prompt_n``); Ollama ``eval_count``, ``prompt_eval_count``; TGI ``details``
(``generated_tokens``, ``input_length``); Triton's ``num_output_tokens``, ``num_input_tokens``.
An error inside the answer (OpenAI ``{"error": {...}}``, the others' ``{"error": "..."}``) is
kept, and such an answer is not finished.

Each event is parsed, not searched for marks, so any JSON whitespace, escaped quotes and
pretty-printed bodies read alike: an OpenAI stream's events are decoded into the few fields
read (:mod:`node_protocol.openai_events`), the others parsed whole (orjson). A stream is cut
into lines however it was split: a partial line waits for the rest. SSE lines start ``data:``
with or without the space and may end ``\\r\\n``; comments and other fields (``event:``) are
skipped; an event whose data spans several lines is read once its blank line comes. NDJSON is
one object a line.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any

import orjson

from node_protocol.openai_events import DECODE, NotJson, Unusual, read_event, read_typed
from node_protocol.surface_events import read_anthropic, read_responses
from node_protocol.surface_events import token_count as _count

# A longer line is dropped unread: a stream's memory stays bounded whatever the backend sends.
MAX_LINE = 4 * 1024 * 1024
_DONE = b"[DONE]"
_EVENT_STARTS = (b"data: {", b"data:{")  # an SSE data line holding a JSON object


class Surface(enum.Enum):
    """The API an answer speaks, which says where its tokens, counts and end are."""

    # Each member is one object, equal only to itself: hashed by identity, in C, rather than by
    # Enum's hash of its name, a Python call (a reader is made, and a surface looked up, on
    # every request).
    __hash__ = object.__hash__

    NONE = "none"  # nothing to read: embeddings, tensors, listings
    CHAT = "chat"  # OpenAI chat completions
    COMPLETIONS = "completions"  # OpenAI (legacy) completions
    OLLAMA_CHAT = "ollama_chat"
    OLLAMA_GENERATE = "ollama_generate"
    TGI = "tgi"  # TGI's own /generate and /generate_stream
    TRITON = "triton"  # Triton's generate extension
    ANTHROPIC = "anthropic"  # Anthropic Messages
    RESPONSES = "responses"  # OpenAI Responses


@functools.lru_cache(maxsize=256)  # a few paths, on every request: looked up in C
def surface_of(path: str) -> Surface:
    """The surface of an answer to ``path``: a node's path (``/v1/chat/completions``,
    ``/api/generate``, ``/generate_stream``, ``/v2/models/m/generate``) or the router's
    endpoint name for one (``/v2/generate_stream``, ``/infer``, which relays chat)."""
    path = path.partition("?")[0].rstrip("/")
    if path.endswith("/chat/completions") or path == "/infer":
        return Surface.CHAT
    if path.endswith("/completions"):
        return Surface.COMPLETIONS
    if path.endswith("/v1/messages"):
        return Surface.ANTHROPIC
    if path.endswith("/v1/responses"):
        return Surface.RESPONSES
    if path.endswith("/api/chat"):
        return Surface.OLLAMA_CHAT
    if path.endswith("/api/generate"):
        return Surface.OLLAMA_GENERATE
    if path.endswith(("/generate", "/generate_stream")):
        return Surface.TRITON if path.startswith("/v2/") else Surface.TGI
    return Surface.NONE


class AnswerReader:
    """Reads one answer, streamed (:meth:`feed` each piece, then :meth:`end`) or whole
    (:meth:`read_body`).

    ``tokens`` counts the pieces of output seen, ``t_first_token``/``t_last_token`` say when the
    first and last came; ``usage_tokens``, ``prompt_tokens`` and ``cached_tokens`` are the
    backend's own counts when it sent them. ``finished``: the answer reached its surface's proper
    end with no error inside; ``error``: the message of an error the backend sent inside it.
    """

    __slots__ = (
        "_data",
        "_partial",
        "_read",
        "_skip_line",
        "_typed",
        "cached_tokens",
        "error",
        "finish_reason",
        "finished",
        "prompt_tokens",
        "surface",
        "t_first_token",
        "t_last_token",
        "tokens",
        "usage_tokens",
    )

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self._read = _READERS[surface]
        self._typed = surface is Surface.CHAT or surface is Surface.COMPLETIONS
        self._partial = bytearray()  # a line still waiting for its end
        self._skip_line = False  # the rest of an overlong line is dropped
        self._data: list[bytes] | None = None  # an SSE event's data lines, until its blank line
        self.t_first_token: float | None = None
        self.t_last_token: float | None = None
        self.tokens = 0
        self.usage_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None
        self.finished = False
        self.error: str | None = None

    @property
    def output_tokens(self) -> int:
        """The backend's exact count when it sent one, else the pieces counted."""
        return self.usage_tokens if self.usage_tokens is not None else self.tokens

    def feed(self, chunk: bytes, now: float) -> None:
        """Read one relayed piece of a stream, however it was split."""
        lines = chunk.split(b"\n")
        rest = lines.pop()  # after the last newline: the start of a line still to come
        if self._partial or self._skip_line:
            if not lines:
                self._hold(rest)
                return
            if self._skip_line:
                self._skip_line = False
                lines[0] = b":"  # the end of a dropped line: read as nothing
            else:
                self._partial += lines[0]
                lines[0] = bytes(self._partial)
                self._partial = bytearray()
        pieces = 0
        typed = self._typed
        for line in lines:
            if line:
                # The usual line of an OpenAI stream, a whole event: decoded into the fields
                # read. Any other line, or one that does not decode (fields of unusual types,
                # data spread over lines), is read by _line.
                if typed and self._data is None and line.startswith(_EVENT_STARTS):
                    try:
                        pieces += read_typed(self, DECODE(line[5:]))
                        continue
                    except NotJson:  # Unusual too
                        pass
                pieces += self._line(line)
            elif self._data is not None:  # a blank line ends an SSE event
                pieces += self._flush()
        if pieces:
            self._took(pieces, now)
        if rest:
            self._hold(rest)

    def end(self, now: float) -> None:
        """The stream's body ended: read a last line that came without its newline, and settle
        the end of a surface that has no end marker (Triton's ends with its body)."""
        pieces = 0
        if self._partial:
            line = bytes(self._partial)
            self._partial = bytearray()
            pieces += self._line(line)
        self._skip_line = False
        if self._data is not None:
            pieces += self._flush()
        if pieces:
            self._took(pieces, now)
        if self.surface is Surface.TRITON and self.error is None:
            self.finished = True

    def read_body(self, body: bytes, now: float) -> None:
        """Read a whole (non-streamed) answer: all of it came at ``now``. Its text is not
        counted as pieces: only an exact count says how many tokens a body holds."""
        self.t_first_token = self.t_last_token = now
        if self.surface is Surface.NONE:
            return
        if self._typed:
            try:
                read_typed(self, DECODE(body))
            except Unusual:
                pass  # fields of other types: parsed and read as they came, below
            except NotJson:
                return
            else:
                self.finished = self.error is None
                return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        # TGI's compatibility route answers a list of one generation.
        for event in answer if type(answer) is list else (answer,):
            if type(event) is dict:
                self._body_event(event)

    def _body_event(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        if error:
            self.note_error(error)
            return
        self._read(self, event)
        self.finished = self.error is None

    def _hold(self, piece: bytes) -> None:
        if self._skip_line:
            return
        if len(self._partial) + len(piece) > MAX_LINE:
            self._partial = bytearray()
            self._skip_line = True
            return
        self._partial += piece

    def _line(self, line: bytes) -> int:
        """Read one line of a stream; the pieces of output it held."""
        if line.startswith(b"data:"):
            payload = line[5:]
            if self._data is not None:
                self._data.append(payload)
                return 0
            if len(payload) < 10 and payload.strip() == _DONE:
                self._done()
                return 0
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:  # the start of data spread over several lines
                self._data = [payload]
                return 0
        elif line[0] == 0x7B:  # "{": an NDJSON line
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                return 0
        else:  # "\r" (the blank line of CRLF ends), an SSE comment or another field
            if line == b"\r" and self._data is not None:
                return self._flush()
            return 0
        # Read here, not in a method of its own: this runs for every event of every stream.
        if type(event) is not dict:
            return 0
        error = event.get("error")
        if error:
            self.note_error(error)
            return 0
        return self._read(self, event)

    def _flush(self) -> int:
        data, self._data = b"\n".join(self._data or ()), None
        if data.strip() == _DONE:
            self._done()
            return 0
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return 0
        if type(event) is not dict:
            return 0
        error = event.get("error")
        if error:
            self.note_error(error)
            return 0
        return self._read(self, event)

    def _took(self, pieces: int, now: float) -> None:
        if self.t_first_token is None:
            self.t_first_token = now
        self.t_last_token = now
        self.tokens += pieces

    def _done(self) -> None:
        # A [DONE] after an error, or with no choice finished, is not a proper end.
        if self.error is None and self.finish_reason is not None:
            self.finished = True

    def note_error(self, error: Any) -> None:
        """An error the backend sent inside the answer: the answer is not finished."""
        self.finished = False
        if self.error is not None:
            return
        message = error.get("message") if isinstance(error, dict) else error
        self.error = message if isinstance(message, str) else str(error)


def _ollama_end(reader: AnswerReader, event: dict[str, Any]) -> None:
    if event.get("done") is not True:
        return
    reader.finished = reader.error is None
    reason = event.get("done_reason")
    if isinstance(reason, str) and reason:
        reader.finish_reason = reason
    if (generated := _count(event.get("eval_count"))) is not None:
        reader.usage_tokens = generated
    if (prompt := _count(event.get("prompt_eval_count"))) is not None:
        reader.prompt_tokens = prompt


def _read_ollama_chat(reader: AnswerReader, event: dict[str, Any]) -> int:
    message = event.get("message")
    piece = type(message) is dict and bool(
        message.get("content") or message.get("thinking") or message.get("tool_calls")
    )
    if "done" in event:
        _ollama_end(reader, event)
    return 1 if piece else 0


def _read_ollama_generate(reader: AnswerReader, event: dict[str, Any]) -> int:
    piece = bool(event.get("response") or event.get("thinking"))
    if "done" in event:
        _ollama_end(reader, event)
    return 1 if piece else 0


def _read_tgi(reader: AnswerReader, event: dict[str, Any]) -> int:
    token = event.get("token")
    piece = type(token) is dict and bool(token.get("text"))
    details = event.get("details")
    if type(details) is dict:
        reason = details.get("finish_reason")
        if isinstance(reason, str) and reason:
            reader.finish_reason = reason
        if (generated := _count(details.get("generated_tokens"))) is not None:
            reader.usage_tokens = generated
        if (prompt := _count(details.get("input_length"))) is not None:
            reader.prompt_tokens = prompt
    if details is not None or event.get("generated_text") is not None:
        reader.finished = reader.error is None  # the last event of a stream, or a body
    return 1 if piece else 0


def _read_triton(reader: AnswerReader, event: dict[str, Any]) -> int:
    if (generated := _count(event.get("num_output_tokens"))) is not None:
        # Sent with each response of a stream: the tokens of that response.
        reader.usage_tokens = (reader.usage_tokens or 0) + generated
    if (prompt := _count(event.get("num_input_tokens"))) is not None:
        reader.prompt_tokens = prompt
    return 1 if event.get("text_output") else 0


def _read_nothing(reader: AnswerReader, event: dict[str, Any]) -> int:
    return 0


_READERS: dict[Surface, Callable[[AnswerReader, dict[str, Any]], int]] = {
    Surface.NONE: _read_nothing,
    Surface.CHAT: read_event,
    Surface.COMPLETIONS: read_event,
    Surface.OLLAMA_CHAT: _read_ollama_chat,
    Surface.OLLAMA_GENERATE: _read_ollama_generate,
    Surface.TGI: _read_tgi,
    Surface.TRITON: _read_triton,
    Surface.ANTHROPIC: read_anthropic,
    Surface.RESPONSES: read_responses,
}
