"""The OpenAI Responses surface: ``POST /{group}/v1/responses`` (and ``/v1/responses``,
``/{group}/responses``), stateless.

It routes like chat (same dispatcher, scheduler, admission, failover, metrics and records), to
nodes with an agent, which passes it through when its engine speaks Responses and translates it
to and from chat completions when not (every kind but Triton); an agentless node gets it only
when its kind is known to speak Responses itself. Errors use the OpenAI envelope.

The router keeps no state, so a request must carry its whole conversation: a
``previous_response_id``, a ``conversation``, ``background: true`` or an ``item_reference`` (all
of which need responses kept somewhere) are refused here with a 400 that says so; no node is
asked to find one (any node the request could reach may not hold it). ``store: true`` is
accepted and means nothing more than ``false``: what a node may keep cannot be asked for again
through the router. Only what routing needs is read, plus the shape checks that let a bad
request fail here: ``model``, ``input`` (a non-empty string or list of items: messages with a
known role, function calls, their outputs, reasoning), ``instructions``, ``stream``,
``max_output_tokens`` within the router's cap, ``tools`` and ``tool_choice``. The bytes go
upstream untouched.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router.dispatch import DISPATCHER, Target
from router.errors import InvalidRequest
from router.limits import BodyLimits
from router.openai_api import (
    check_model,
    load_object,
    surface_target,
)

RESPONSES_PATH = "/v1/responses"
ROLES = frozenset({"user", "assistant", "system", "developer"})
PART_TYPES = frozenset({"input_text", "output_text", "input_image", "input_file", "refusal"})
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})
STATEFUL = {
    "previous_response_id": "a previous response",
    "conversation": "a conversation",
}


def _check_stateless(parsed: dict[str, Any]) -> None:
    for key, what in STATEFUL.items():
        if parsed.get(key) is not None:
            raise InvalidRequest(
                f"'{key}' is not supported: this router is stateless and keeps no responses, "
                f"so it cannot resume {what}; send the whole conversation in 'input' "
                "(and 'store': false)",
                param=key,
            )
    if parsed.get("background") is True:
        raise InvalidRequest(
            "'background': true is not supported: this router is stateless and keeps no "
            "responses to poll",
            param="background",
        )


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content: must be a string or a list", param="input")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            known = ", ".join(sorted(PART_TYPES))
            raise InvalidRequest(
                f"{where}.content[{j}]: a part must be an object of type {known}", param="input"
            )
        if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}.content[{j}].text: must be a string", param="input")


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: must be an object", param="input")
    kind = item.get("type", "message")
    if kind == "item_reference":
        raise InvalidRequest(
            f"{where}: item references are not supported: this router is stateless and keeps "
            "no items; send the item itself",
            param="input",
        )
    if kind not in ITEM_TYPES:
        raise InvalidRequest(f"{where}.type: must be one of {sorted(ITEM_TYPES)}", param="input")
    if kind == "message":
        if item.get("role") not in ROLES:
            raise InvalidRequest(f"{where}.role: must be one of {sorted(ROLES)}", param="input")
        _check_content(item.get("content"), where)
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise InvalidRequest(f"{where}.{key}: must be a string", param="input")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"{where}.call_id: must be a string", param="input")
        if not isinstance(item.get("output"), str | list):
            raise InvalidRequest(f"{where}.output: must be a string or a list", param="input")


def _check_input(value: Any, max_items: int) -> None:
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty", param="input")
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "'input' must be a non-empty string or a non-empty list of items", param="input"
        )
    if len(value) > max_items:
        raise InvalidRequest(
            f"too many input items: {len(value)} (at most {max_items})", param="input"
        )
    for i, item in enumerate(value):
        _check_item(item, f"input[{i}]")


def _check_tools(tools: Any, choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("type"), str) for t in tools
        ):
            raise InvalidRequest("'tools' must be a list of objects with a type", param="tools")
        for i, tool in enumerate(tools):
            if tool["type"] == "function" and not isinstance(tool.get("name"), str):
                raise InvalidRequest(f"tools[{i}].name: must be a string", param="tools")
    if choice is None or choice in ("auto", "none", "required"):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise InvalidRequest(
            "'tool_choice' must be auto, none, required or an object with a type",
            param="tool_choice",
        )


def _check_options(parsed: dict[str, Any], limits: BodyLimits) -> None:
    stream = parsed.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    instructions = parsed.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    cap = parsed.get("max_output_tokens")
    limit = limits.max_output_tokens
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= limit
    ):
        raise InvalidRequest(
            f"'max_output_tokens' must be an integer from 1 to {limit}", param="max_output_tokens"
        )


def parse_responses(body: bytes, limits: BodyLimits) -> dict[str, Any]:
    """Check the parts of a Responses body the router and the nodes rely on."""
    parsed = load_object(body)
    check_model(parsed)
    _check_stateless(parsed)
    _check_input(parsed.get("input"), limits.max_messages)
    _check_options(parsed, limits)
    _check_tools(parsed.get("tools"), parsed.get("tool_choice"))
    return parsed


class ResponsesApi:
    def __init__(self, limits: BodyLimits) -> None:
        self._limits = limits

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/responses", self.responses)
            for prefix in ("/v1", "/{group}/v1", "/{group}")
        ]

    async def responses(self, request: web.Request) -> web.StreamResponse:
        def build(body: bytes) -> Target:
            return surface_target(RESPONSES_PATH, parse_responses(body, self._limits), body)

        return await request.app[DISPATCHER].dispatch(request, RESPONSES_PATH, build)
