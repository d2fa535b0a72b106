"""Anthropic Messages translated to and from OpenAI chat completions, for an engine that does not
speak Messages itself (:mod:`node_agent.surfaces` decides).

Request:

- ``system`` (a string or text blocks) → a first ``system`` message.
- A turn whose content is a string stays one message. In a list of blocks, ``text`` and
  ``image`` (base64 → a data URL, or its URL) become the message's content (a plain string when
  all text); an assistant's ``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON
  ``arguments``); a user's ``tool_result`` blocks become ``tool`` messages (before the user's own
  content, so they follow the calls they answer), their text joined and images sent in a user
  message after them; ``document`` blocks with a text source become text; ``thinking`` and
  ``redacted_thinking`` are dropped (no chat engine takes them back).
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` (→ ``stop``);
  ``tools`` → function tools (``input_schema`` as ``parameters``); ``tool_choice`` ``auto`` /
  ``any`` (→ ``required``) / ``tool`` (→ that function) / ``none``; ``disable_parallel_tool_use``
  → ``parallel_tool_calls: false``. A stream asks for ``stream_options.include_usage``.

Answer: ``content`` holds a ``thinking`` block for reasoning text, a ``text`` block, then a
``tool_use`` block per call (``arguments`` that are not a JSON object, as from a model cut off
by ``max_tokens``, give an empty ``input``). ``stop_reason``: ``stop`` → ``end_turn`` (or
``stop_sequence`` when the engine names the stop string that ended it), ``length`` →
``max_tokens``, ``tool_calls`` → ``tool_use``, ``content_filter`` → ``refusal``. ``usage``:
``input_tokens`` is the prompt less what was read from the cache
(``cache_read_input_tokens``), as Anthropic counts them.
Streams: :mod:`node_agent.anthropic_stream`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .chat_answer import ChatDelta, Usage
from .errors import BadRequest, json_object
from .triton_ask import estimate_tokens

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


@dataclass(frozen=True, slots=True)
class MessagesAsk:
    """One Messages request, translated: the chat body and what the answer needs."""

    model: str
    chat_body: bytes
    stream: bool
    stop_sequences: tuple[str, ...]


def _image_url(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest("an image block needs a source object")
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    else:
        raise BadRequest("an image source must be base64 data or a URL")
    return {"type": "image_url", "image_url": {"url": url}}


def _part(block: dict[str, Any]) -> dict[str, Any] | None:
    """A text or image block as a chat content part; None for blocks that have none."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        return _image_url(block)
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
        raise BadRequest("only text documents can be translated to chat completions")
    return None


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``tool_result`` as a ``tool`` message, and its images as a user message after it."""
    content = block.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, images = [], []
    for item in blocks:
        if isinstance(item, dict) and item.get("type") == "image":
            images.append(_image_url(item))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            texts.append(item["text"])
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}"
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
    ]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest("a message's content must be a string or a list of blocks")
    leading: list[dict[str, Any]] = []  # tool results answer the calls before this turn
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise BadRequest("a content block must be an object")
        if block.get("type") == "tool_result":
            leading += _tool_result(block)
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            call = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": call})
        elif (part := _part(block)) is not None:
            parts.append(part)
    turn: dict[str, Any] = {"role": role}
    if parts or not calls:
        turn["content"] = _content(parts)
    if calls:
        turn["tool_calls"] = calls
    return [*leading, turn] if parts or calls or not leading else leading


def _system(system: Any) -> str | None:
    if isinstance(system, str):
        return system or None
    if isinstance(system, list):
        text = "\n".join(b["text"] for b in system if isinstance(b, dict) and "text" in b)
        return text or None
    return None


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
            for tool in tools
            if isinstance(tool, dict)
        ]
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True and "tools" in chat:
        chat["parallel_tool_calls"] = False


def _body(raw: bytes) -> dict[str, Any]:
    body = json_object(raw)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: must be a non-empty string")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("messages: must be a non-empty list")
    return body


def translate(raw: bytes) -> MessagesAsk:
    """A Messages body as a chat-completions body."""
    body = _body(raw)
    messages: list[dict[str, Any]] = []
    if (system := _system(body.get("system"))) is not None:
        messages.append({"role": "system", "content": system})
    for message in body["messages"]:
        if not isinstance(message, dict):
            raise BadRequest("every message must be an object")
        messages += _turn(message)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for key in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat[key] = body[key]
    stops = body.get("stop_sequences")
    stops = tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else ()
    if stops:
        chat["stop"] = list(stops)
    _tools(body, chat)
    stream = body.get("stream") is True
    if stream:
        chat |= {"stream": True, "stream_options": {"include_usage": True}}
    return MessagesAsk(body["model"], orjson.dumps(chat), stream, stops)


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def stop_reason(ask: MessagesAsk, finish: str | None, stop: str | None) -> tuple[str, str | None]:
    """(``stop_reason``, ``stop_sequence``) for chat's finish reason and stop string."""
    if finish == "stop" and stop is not None and stop in ask.stop_sequences:
        return "stop_sequence", stop
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def usage(counts: Usage | None, output: int) -> dict[str, int]:
    """Anthropic's ``usage``; ``output``: the pieces counted when the backend sent no counts."""
    if counts is None:
        return {"input_tokens": 0, "output_tokens": output}
    cached = counts.cached or 0
    found = {"input_tokens": max(0, counts.prompt - cached), "output_tokens": counts.output}
    if counts.cached is not None:
        found["cache_read_input_tokens"] = cached
    return found


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message(ask: MessagesAsk, answer: ChatDelta) -> dict[str, Any]:
    """A whole chat answer as a Messages ``message``."""
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{uuid.uuid4().hex}",
                "name": call.name or "",
                "input": tool_input(call.arguments),
            }
        )
    reason, sequence = stop_reason(ask, answer.finish_reason, answer.stop_reason)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": ask.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(answer.usage, estimate_tokens(written(answer))),
    }


def written(answer: ChatDelta) -> str:
    """All the text an answer holds (for an estimate of its tokens when nobody counted)."""
    return answer.reasoning + answer.text + "".join(c.arguments for c in answer.tool_calls)
