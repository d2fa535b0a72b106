"""OpenAI Responses translated to and from chat completions, for an engine that does not speak
Responses itself (:mod:`node_agent.surfaces` decides). Stateless: nothing is stored, whatever
``store`` says (the answer says ``store: false``), and a request that needs stored state
(``previous_response_id``, ``conversation``, an ``item_reference``) is a 400.

Request:

- ``instructions`` → a first ``system`` message; ``input`` as a string → one user message.
- Input items: a message (``user``, ``assistant``, ``system``; ``developer`` as ``system``, which
  every chat template knows) with its text parts joined (``input_image`` as an image part);
  ``function_call`` items → the ``tool_calls`` of one assistant message (with the assistant's
  text just before them, when there is); ``function_call_output`` → a ``tool`` message;
  ``reasoning`` items are dropped (no chat engine takes them back).
- ``max_output_tokens`` → ``max_tokens``; ``temperature``, ``top_p``, ``parallel_tool_calls``;
  function ``tools`` → chat function tools (any other tool type is a 400: chat has none);
  ``tool_choice``; ``text.format`` (``json_schema``, ``json_object``) → ``response_format``;
  ``reasoning.effort`` → ``reasoning_effort``. A stream asks for
  ``stream_options.include_usage``.

Answer: a ``response`` whose ``output`` holds a ``reasoning`` item for reasoning text, a
``message`` item with one ``output_text`` part, then a ``function_call`` item per call; status
``completed``, or ``incomplete`` with ``incomplete_details.reason`` ``max_output_tokens``
(finish ``length``) or ``content_filter``. Streams: :mod:`node_agent.responses_stream`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .chat_answer import ChatDelta, ToolCall, Usage
from .errors import BadRequest, json_object

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class ResponsesAsk:
    """One Responses request, translated: the chat body and what the answer echoes."""

    model: str
    chat_body: bytes
    stream: bool
    echo: dict[str, Any]  # request fields the response object repeats


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _part(part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise BadRequest("a content part must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": part["image_url"]}}
    raise BadRequest(f"content parts of type {kind!r} cannot be translated to chat completions")


def _content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("a message's content must be a string or a list of parts")
    parts = [_part(p) for p in content]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _call(item: dict[str, Any]) -> dict[str, Any]:
    function = {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))}
    return {"id": str(item.get("call_id", "")), "type": "function", "function": function}


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
    raise BadRequest("a function_call_output's output must be a string or a list of parts")


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest("input: must be a non-empty string or list of items")
    messages: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            raise BadRequest("every input item must be an object")
        kind = item.get("type", "message")
        last = messages[-1] if messages else None
        if kind == "message":
            role = ROLES.get(str(item.get("role")))
            if role is None:
                raise BadRequest(f"input message roles are {', '.join(ROLES)}")
            messages.append({"role": role, "content": _content(item.get("content"))})
        elif kind == "function_call":
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(_call(item))
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [_call(item)]})
        elif kind == "function_call_output":
            text = _output_text(item.get("output"))
            messages.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text}
            )
        elif kind != "reasoning":
            raise BadRequest(f"input items of type {kind!r} cannot be translated (stateless)")
    return messages


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise BadRequest("only function tools can be translated to chat completions")
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
            for key in ("description", "strict"):
                if tool.get(key) is not None:
                    function[key] = tool[key]
            converted.append({"type": "function", "function": function})
        chat["tools"] = converted
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        raise BadRequest("tool_choice: only auto, none, required or a function can be translated")


def _format(body: dict[str, Any], chat: dict[str, Any]) -> None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]


def _body(raw: bytes) -> dict[str, Any]:
    body = json_object(raw)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: must be a non-empty string")
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise BadRequest(f"'{key}' needs stored responses: this node keeps none")
    return body


def translate(raw: bytes) -> ResponsesAsk:
    """A Responses body as a chat-completions body."""
    body = _body(raw)
    messages = _messages(body.get("input"))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    _tools(body, chat)
    _format(body, chat)
    stream = body.get("stream") is True
    if stream:
        chat |= {"stream": True, "stream_options": {"include_usage": True}}
    echo = {
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "metadata": body.get("metadata") or {},
    }
    return ResponsesAsk(body["model"], orjson.dumps(chat), stream, echo)


def response(
    ask: ResponsesAsk, rid: str, status: str, output: list[dict[str, Any]], **more: Any
) -> dict[str, Any]:
    """A ``response`` object (``more``: ``usage``, ``incomplete_details``)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": ask.model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "previous_response_id": None,
        "store": False,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        **ask.echo,
        **more,
    }


def usage(counts: Usage | None, output: int) -> dict[str, Any]:
    """The Responses ``usage``; ``output``: the count to use when the backend sent none."""
    prompt = counts.prompt if counts is not None else 0
    generated = counts.output if counts is not None else output
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": (counts.cached or 0) if counts else 0},
        "output_tokens": generated,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + generated,
    }


def ending(finish: str | None) -> tuple[str, dict[str, Any]]:
    """(status, the fields that say why it stopped) for chat's finish reason."""
    reason = INCOMPLETE.get(finish or "")
    if reason is None:
        return "completed", {}
    return "incomplete", {"incomplete_details": {"reason": reason}}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    content = [part] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content}


def call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id or new_id("call"),
        "name": call.name or "",
        "arguments": arguments,
        "status": status,
    }


def whole(ask: ResponsesAsk, answer: ChatDelta, output_estimate: int) -> dict[str, Any]:
    """A whole chat answer as a ``response``."""
    output: list[dict[str, Any]] = []
    if answer.reasoning:
        output.append(reasoning_item(new_id("rs"), answer.reasoning))
    if answer.text or not answer.tool_calls:
        output.append(message_item(new_id("msg"), answer.text))
    for call in answer.tool_calls:
        output.append(call_item(new_id("fc"), call, call.arguments, "completed"))
    status, why = ending(answer.finish_reason)
    counts = usage(answer.usage, output_estimate)
    return response(ask, new_id("resp"), status, output, usage=counts, **why)
