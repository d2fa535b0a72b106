"""The Anthropic Messages surface: ``POST /{group}/v1/messages`` (and ``/v1/messages``).

An Anthropic client (the SDK, Claude Code) uses the group's URL as its base URL. The request
routes like chat: same dispatcher, scheduler, admission, failover, metrics and records. It goes
to nodes with an agent, which passes it through when its engine speaks Messages and translates
it to and from chat completions when not (every kind but Triton); an agentless node gets it only
when its kind is known to speak Messages itself.

Only what routing needs is read, plus the shape checks that let a bad request fail here, in
Anthropic's envelope, before any node sees it: ``model``; ``max_tokens`` (required, within the
router's output cap); ``messages`` (a non-empty list of ``user``/``assistant`` turns, each a
string or a non-empty list of known content blocks, ``tool_use`` only from the assistant and
``tool_result`` only from the user); ``system``; ``stream``; ``tools`` (custom tools with a name
and an ``input_schema`` object); ``tool_choice``; ``stop_sequences``. The bytes go upstream
untouched. ``x-api-key`` is taken as the API key (:mod:`router.auth`); ``anthropic-version`` and
``anthropic-beta`` are accepted and not needed.
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

MESSAGES_PATH = "/v1/messages"
ROLES = ("user", "assistant")
BLOCK_TYPES = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def _where(i: int, j: int | None = None) -> str:
    return f"messages.{i}" if j is None else f"messages.{i}.content.{j}"


def _check_block(block: Any, role: str, where: str) -> None:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where}: a content block must be an object", param=where)
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        known = ", ".join(sorted(BLOCK_TYPES))
        raise InvalidRequest(f"{where}.type: must be one of {known}", param=where)
    if kind == "text" and not isinstance(block.get("text"), str):
        raise InvalidRequest(f"{where}.text: must be a string", param=where)
    if kind in ("image", "document") and not isinstance(block.get("source"), dict):
        raise InvalidRequest(f"{where}.source: must be an object", param=where)
    if kind == "tool_use":
        if role != "assistant":
            raise InvalidRequest(f"{where}: tool_use blocks come from the assistant", param=where)
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise InvalidRequest(f"{where}: tool_use needs a string id and name", param=where)
        if not isinstance(block.get("input"), dict):
            raise InvalidRequest(f"{where}.input: must be an object", param=where)
    if kind == "tool_result":
        if role != "user":
            raise InvalidRequest(f"{where}: tool_result blocks come from the user", param=where)
        if not isinstance(block.get("tool_use_id"), str):
            raise InvalidRequest(f"{where}.tool_use_id: must be a string", param=where)
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"{where}.content: must be a string or a list", param=where)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        where = _where(i)
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{where}.role: must be 'user' or 'assistant'", param=where)
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise InvalidRequest(
                f"{where}.content: must be a string or a non-empty list of blocks", param=where
            )
        for j, block in enumerate(content):
            _check_block(block, role, _where(i, j))


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list) or not all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        raise InvalidRequest("system: must be a string or a list of text blocks", param="system")


def _check_tools(tools: Any, choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("tools: must be a list", param="tools")
        for i, tool in enumerate(tools):
            where = f"tools.{i}"
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
                raise InvalidRequest(
                    f"{where}: only custom tools (name, input_schema) are served", param=where
                )
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidRequest(f"{where}.name: must be a non-empty string", param=where)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise InvalidRequest(f"{where}.input_schema: must be an object", param=where)
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        raise InvalidRequest(
            "tool_choice: must be an object whose type is auto, any, tool or none",
            param="tool_choice",
        )
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        raise InvalidRequest("tool_choice.name: must name the tool", param="tool_choice")


def _check_options(parsed: dict[str, Any]) -> None:
    stream = parsed.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean", param="stream")
    stops = parsed.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise InvalidRequest("stop_sequences: must be a list of strings", param="stop_sequences")
    for key in ("temperature", "top_p"):
        value = parsed.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"{key}: must be a number", param=key)


def parse_messages(body: bytes, limits: BodyLimits) -> dict[str, Any]:
    """Check the parts of a Messages body the router and the nodes rely on."""
    parsed = load_object(body)
    check_model(parsed)
    if "max_tokens" not in parsed:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    limits.check(parsed)  # max_tokens within the cap, the number of messages
    _check_messages(parsed.get("messages"))
    _check_system(parsed.get("system"))
    _check_tools(parsed.get("tools"), parsed.get("tool_choice"))
    _check_options(parsed)
    return parsed


class AnthropicApi:
    def __init__(self, limits: BodyLimits) -> None:
        self._limits = limits

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"{prefix}/messages", self.messages) for prefix in ("/v1", "/{group}/v1")]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        def build(body: bytes) -> Target:
            return surface_target(MESSAGES_PATH, parse_messages(body, self._limits), body)

        return await request.app[DISPATCHER].dispatch(request, MESSAGES_PATH, build)
