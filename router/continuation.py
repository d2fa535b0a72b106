"""What a cut stream gave the client, and the request that continues it on another node.

The client already has part of the answer. The conversation goes again to another node serving
the model, with the text already streamed as the start of the assistant's turn and the output
cap lowered by what was sent (:mod:`router.resume` sends it, :mod:`router.splice` joins the new
stream to the client's). Only an engine that continues an assistant message can take it, each
in its own way:

- vLLM (``continue_final_message`` with ``add_generation_prompt: false``) and TGI (its chat
  route's ``continue_final_message``) on OpenAI chat; llama.cpp's ``llama-server`` continues a
  final assistant message by itself (and takes the same two fields), the generic ``openai`` kind
  is taken to behave so; Ollama continues a final assistant message in ``/api/chat`` and in its
  OpenAI chat route, which it turns into ``/api/chat``.
- OpenAI completions continue their prompt on every engine that does not template it (all but
  Ollama, whose completions route puts the prompt in a chat template).
- Ollama's ``/api/generate`` continues only a ``raw`` prompt (any other is templated).

Not continued (the client gets the SSE error event): LM Studio and Triton chat (their templates
close the assistant turn), Triton's own generate routes, an answer with more than text in it so
far (a tool call, reasoning, a refusal), several choices, ``echo``, a structured-output format
(the grammar would start over), and a cap already reached. The continuation is another replica's
text, not what the cut node would have written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from node_protocol.events import Surface
from node_protocol.wire import STREAM_CUT_CODE

__all__ = ["CONTINUING_KINDS", "Continuation", "Sent", "Transcript", "continuation"]

# Which backend kinds continue a cut answer, per surface the client speaks.
CONTINUING_KINDS: dict[Surface, frozenset[str]] = {
    Surface.CHAT: frozenset({"vllm", "tgi", "ollama", "openai", "llamacpp"}),
    Surface.COMPLETIONS: frozenset({"vllm", "tgi", "openai", "llamacpp", "lmstudio", "triton"}),
    Surface.OLLAMA_CHAT: frozenset({"ollama"}),
    Surface.OLLAMA_GENERATE: frozenset({"ollama"}),
}
# Bytes of a stream kept for a resume; a longer stream is not resumed (its memory stays bounded).
MAX_TRANSCRIPT = 1024 * 1024
# What a delta may hold besides text: an answer that showed any of it is not resumed as text.
_OTHER_OUTPUT = ("tool_calls", "function_call", "reasoning_content", "reasoning", "refusal")
_TEXT_FORMATS = (None, "text")


class Transcript:
    """The bytes of a stream's current part as the client got them, kept while it is relayed
    (the relay appends to ``parts`` and takes each piece's size from ``room``) and read only if
    it is cut: nothing is parsed on the way."""

    __slots__ = ("parts", "room")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.room = MAX_TRANSCRIPT  # bytes left; below zero nothing more is kept

    @property
    def full(self) -> bool:
        """Past MAX_TRANSCRIPT: not resumable."""
        return self.room < 0

    def add(self, piece: bytes) -> None:
        self.room -= len(piece)
        if self.room >= 0:
            self.parts.append(piece)

    def take(self) -> bytes:
        """What was kept since the last take."""
        data = b"".join(self.parts)
        self.parts.clear()
        self.room = MAX_TRANSCRIPT
        return data


@dataclass(slots=True)
class Sent:
    """What a part of a stream gave the client: its text, whether that was all (no tool call,
    reasoning, refusal or second choice), and the stream's id and creation time."""

    text: str = ""
    only_text: bool = True
    stream_id: str | None = None
    created: int | None = None


def events(surface: Surface, data: bytes) -> list[dict[str, Any]]:
    """The JSON events of a stream's bytes (SSE ``data:`` or NDJSON lines); others skipped."""
    found = []
    sse = surface in (Surface.CHAT, Surface.COMPLETIONS)
    for line in data.split(b"\n"):
        line = line.strip()
        if sse:
            if not line.startswith(b"data:"):
                continue
            line = line[5:].strip()
        if not line.startswith(b"{"):
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def read_sent(surface: Surface, data: bytes, sent: Sent) -> None:
    """Add what ``data`` (a part of the stream) showed the client to ``sent``."""
    read = _READERS.get(surface)
    for event in events(surface, data):
        if sent.stream_id is None and isinstance(event.get("id"), str):
            sent.stream_id = event["id"]
            created = event.get("created")
            sent.created = created if isinstance(created, int) else None
        error = event.get("error")
        if error:
            sent.only_text = sent.only_text and _cut_event(error, event)
            continue
        if read is None:
            sent.only_text = False
            continue
        read(event, sent)


def _cut_event(error: Any, event: dict[str, Any]) -> bool:
    """The error an agent ends a stream with when its backend broke off (not the answer's)."""
    code = error.get("code") if isinstance(error, dict) else event.get("error_type")
    return code == STREAM_CUT_CODE


def _read_openai(event: dict[str, Any], sent: Sent) -> None:
    choices = event.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            sent.only_text = False
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            sent.text += _text(delta.get("content"), sent)
            if any(delta.get(k) for k in _OTHER_OUTPUT):
                sent.only_text = False
        else:
            sent.text += _text(choice.get("text"), sent)


def _read_ollama(event: dict[str, Any], sent: Sent) -> None:
    message = event.get("message")
    if isinstance(message, dict):
        sent.text += _text(message.get("content"), sent)
        if message.get("tool_calls") or message.get("thinking"):
            sent.only_text = False
    else:
        sent.text += _text(event.get("response"), sent)
        if event.get("thinking"):
            sent.only_text = False


def _text(value: Any, sent: Sent) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    sent.only_text = False
    return ""


_READERS: dict[Surface, Callable[[dict[str, Any], Sent], None]] = {
    Surface.CHAT: _read_openai,
    Surface.COMPLETIONS: _read_openai,
    Surface.OLLAMA_CHAT: _read_ollama,
    Surface.OLLAMA_GENERATE: _read_ollama,
}


@dataclass(frozen=True, slots=True)
class Continuation:
    """The request that goes on with a cut answer: its body (for the node path the client's
    request used) and the backend kinds that can take it."""

    body: bytes
    kinds: frozenset[str]


def continuation(surface: Surface, body: bytes, text: str, sent: int) -> Continuation | None:
    """The request that continues ``text`` (the answer so far, ``sent`` tokens of it) of the
    client's request ``body``; None when it cannot be continued."""
    kinds = CONTINUING_KINDS.get(surface)
    if kinds is None or not text:
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict):
        return None
    build = _BUILDERS[surface]
    continued = build(request, text, sent)
    if continued is None:
        return None
    return Continuation(orjson.dumps(continued), kinds)


def _one_choice(request: dict[str, Any]) -> bool:
    return all(request.get(key) in (None, 1) for key in ("n", "best_of"))


def _lowered(cap: Any, sent: int) -> int | None:
    """A token cap less what was sent; None when nothing is left (or it is not a count)."""
    if isinstance(cap, bool) or not isinstance(cap, int):
        return None
    left = cap - sent
    return left if left >= 1 else None


def _lower_caps(target: dict[str, Any], keys: tuple[str, ...], sent: int) -> bool:
    """Lower each cap in ``target`` by ``sent``; False when one is used up."""
    for key in keys:
        if target.get(key) is not None:
            left = _lowered(target[key], sent)
            if left is None:
                return False
            target[key] = left
    return True


def _with_assistant(messages: Any, text: str) -> list[Any] | None:
    """The conversation with ``text`` as the start of the assistant's turn (added to the
    client's own final assistant message, if it ended with one)."""
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        if not isinstance(last.get("content"), str) or last.get("tool_calls"):
            return None
        return [*messages[:-1], {**last, "content": last["content"] + text}]
    return [*messages, {"role": "assistant", "content": text}]


def _chat(request: dict[str, Any], text: str, sent: int) -> dict[str, Any] | None:
    fmt = request.get("response_format")
    if not _one_choice(request) or (isinstance(fmt, dict) and fmt.get("type") not in _TEXT_FORMATS):
        return None
    messages = _with_assistant(request.get("messages"), text)
    if messages is None or not _lower_caps(request, ("max_tokens", "max_completion_tokens"), sent):
        return None
    request["messages"] = messages
    request["continue_final_message"] = True
    request["add_generation_prompt"] = False
    return request


def _completion(request: dict[str, Any], text: str, sent: int) -> dict[str, Any] | None:
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or request.get("echo") or request.get("suffix"):
        return None
    if not _one_choice(request) or not _lower_caps(request, ("max_tokens",), sent):
        return None
    request["prompt"] = prompt + text
    return request


def _ollama_options(request: dict[str, Any], sent: int) -> bool:
    options = request.get("options")
    if not isinstance(options, dict):
        return options is None
    cap = options.get("num_predict")
    if isinstance(cap, int) and not isinstance(cap, bool) and cap < 0:
        return True  # -1: no cap, -2: fill the context
    options = dict(options)
    request["options"] = options
    return _lower_caps(options, ("num_predict",), sent)


def _ollama_chat(request: dict[str, Any], text: str, sent: int) -> dict[str, Any] | None:
    messages = _with_assistant(request.get("messages"), text)
    fmt = request.get("format")
    if messages is None or fmt not in (None, "") or not _ollama_options(request, sent):
        return None
    request["messages"] = messages
    return request


def _ollama_generate(request: dict[str, Any], text: str, sent: int) -> dict[str, Any] | None:
    prompt = request.get("prompt")
    if request.get("raw") is not True or not isinstance(prompt, str) or request.get("suffix"):
        return None
    if request.get("format") not in (None, "") or not _ollama_options(request, sent):
        return None
    request["prompt"] = prompt + text
    return request


_BUILDERS: dict[Surface, Callable[[dict[str, Any], str, int], dict[str, Any] | None]] = {
    Surface.CHAT: _chat,
    Surface.COMPLETIONS: _completion,
    Surface.OLLAMA_CHAT: _ollama_chat,
    Surface.OLLAMA_GENERATE: _ollama_generate,
}
