"""The OpenAI-compatible surface: ``/{group}/v1/...``, ``/{group}/...`` and ``/v1/...``, and the
Octopus ``/{group}/infer`` endpoint.

Only what routing needs is read from the body (``model``, and the shape checks that let a bad
request fail here with a clear 400 rather than at a node); the bytes go upstream untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from router.dispatch import DISPATCHER, Target
from router.errors import InvalidRequest, ModelNotFound
from router.limits import BodyLimits
from router.registry import ROUTABLE, Group, Registry

MAX_MODEL_NAME = 256
# Every kind speaks OpenAI chat and completions (for Triton the agent translates them to its
# generate extension); embeddings are not offered by the agent on Triton nodes.
OPENAI_KINDS = frozenset({"ollama", "vllm", "tgi", "lmstudio", "llamacpp", "openai", "triton"})
EMBEDDING_KINDS = OPENAI_KINDS - {"triton"}
# Anthropic Messages and OpenAI Responses: an agent answers them on every kind it can chat with
# (natively or translated; Triton's generate has no roles or tools to translate to); a node
# without an agent gets them only when its kind is known to speak them itself.
AGENT_SURFACE_KINDS = OPENAI_KINDS - {"triton"}
NATIVE_SURFACE_KINDS = frozenset({"vllm", "llamacpp"})
INFER_DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI operation: the node path it goes to and what its body must hold."""

    path: str
    required_list: str | None


CHAT = Endpoint("/v1/chat/completions", "messages")
COMPLETIONS = Endpoint("/v1/completions", None)
EMBEDDINGS = Endpoint("/v1/embeddings", None)


def load_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("request body is empty: expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("request body must be a JSON object")
    return parsed


def check_model(parsed: dict[str, Any]) -> str:
    model = parsed.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    return model


def surface_target(path: str, parsed: dict[str, Any], body: bytes) -> Target:
    """The target of a Messages or Responses body (``parsed``, already checked, its model
    included): agents translate these surfaces, and some engines speak them natively."""
    return Target(
        path,
        str(parsed["model"]),
        body,
        kinds=AGENT_SURFACE_KINDS,
        agentless_kinds=NATIVE_SURFACE_KINDS,
        stream=parsed.get("stream") is True,
        parsed=parsed,
    )


def parse_body(body: bytes, endpoint: Endpoint, limits: BodyLimits) -> dict[str, Any]:
    """Check the parts of an OpenAI body the router relies on; raise InvalidRequest if bad."""
    parsed = load_object(body)
    limits.check(parsed)
    check_model(parsed)
    if endpoint.required_list is not None:
        items = parsed.get(endpoint.required_list)
        if not isinstance(items, list) or not items:
            raise InvalidRequest(
                f"'{endpoint.required_list}' must be a non-empty array",
                param=endpoint.required_list,
            )
    stream = parsed.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return parsed


class OpenAIApi:
    """OpenAI handlers; routing itself is the app's Dispatcher."""

    def __init__(self, registry: Registry, limits: BodyLimits) -> None:
        self._registry = registry
        self._limits = limits
        self._started = int(time.time())

    def routes(self) -> list[web.RouteDef]:
        ops = [
            ("chat/completions", CHAT),
            ("completions", COMPLETIONS),
            ("embeddings", EMBEDDINGS),
        ]
        table: list[web.RouteDef] = []
        for prefix in ("/v1", "/{group}/v1", "/{group}"):
            for suffix, endpoint in ops:
                table.append(web.post(f"{prefix}/{suffix}", self._handler(endpoint)))
            table.append(web.get(f"{prefix}/models", self.list_models))
            table.append(web.get(f"{prefix}/models/{{model:.+}}", self.get_model))
        table.append(web.post("/{group}/infer", self.infer))
        return table

    def _handler(self, endpoint: Endpoint) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            def build(body: bytes) -> Target:
                parsed = parse_body(body, endpoint, self._limits)
                return _openai_target(endpoint, parsed, body)

            return await request.app[DISPATCHER].dispatch(request, endpoint.path, build)

        return handle

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """Octopus ``/infer``: a chat-completions body, or ``{prompt, maxTokens}`` answered with
        ``{text, tokensUsed, model}``."""
        dispatcher = request.app[DISPATCHER]
        group = dispatcher.group_of(request)
        prompt_shape = False

        def build(body: bytes) -> Target:
            nonlocal prompt_shape
            parsed = load_object(body)
            if "messages" in parsed:
                return _openai_target(CHAT, parse_body(body, CHAT, self._limits), body)
            prompt = parsed.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise InvalidRequest(
                    "'/infer' takes a chat body with 'messages' or a non-empty 'prompt'",
                    param="prompt",
                )
            max_tokens = parsed.get("maxTokens", parsed.get("max_tokens", INFER_DEFAULT_MAX_TOKENS))
            limit = self._limits.max_output_tokens
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise InvalidRequest("'maxTokens' must be an integer", param="maxTokens")
            if not 1 <= max_tokens <= limit:
                raise InvalidRequest(f"'maxTokens' must be from 1 to {limit}", param="maxTokens")
            model = parsed.get("model") or self._only_model(group)
            chat = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "stream": False,
            }
            prompt_shape = True
            return _openai_target(CHAT, chat, orjson.dumps(chat))

        response = await dispatcher.dispatch(request, "/infer", build)
        if not prompt_shape or not isinstance(response, web.Response) or response.status != 200:
            return response
        return _infer_answer(response)

    def _only_model(self, group: Group) -> str:
        threshold = self._registry.threshold
        models = {
            m.id
            for node in group.nodes.values()
            if node.state(threshold) in ROUTABLE
            for m in node.models()
        }
        if len(models) != 1:
            raise InvalidRequest(
                "this group serves several models: name one in 'model'", param="model"
            )
        return models.pop()

    def _served_models(self, group: Group) -> dict[str, dict[str, Any]]:
        threshold = self._registry.threshold
        cards: dict[str, dict[str, Any]] = {}
        for node in group.nodes.values():
            if node.state(threshold) not in ROUTABLE:
                continue
            for model in node.models():
                for model_id in (model.id, *model.aliases):
                    card = cards.setdefault(
                        model_id,
                        {
                            "id": model_id,
                            "object": "model",
                            "created": self._started,
                            "owned_by": group.name,
                            "loaded": False,
                            "nodes": 0,
                        },
                    )
                    card["nodes"] += 1
                    card["loaded"] = card["loaded"] or model.loaded
        return cards

    async def list_models(self, request: web.Request) -> web.Response:
        cards = self._served_models(request.app[DISPATCHER].group_of(request))
        data = [cards[k] for k in sorted(cards)]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def get_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        card = self._served_models(request.app[DISPATCHER].group_of(request)).get(model)
        if card is None:
            raise ModelNotFound(f"model '{model}' is not served by this group", param="model")
        return web.json_response(card, dumps=_dumps)


def _openai_target(endpoint: Endpoint, parsed: dict[str, Any], body: bytes) -> Target:
    stream = parsed.get("stream") is True
    return Target(
        endpoint.path,
        check_model(parsed),
        body,
        kinds=EMBEDDING_KINDS if endpoint is EMBEDDINGS else OPENAI_KINDS,
        stream=stream,
        done_marker=stream,
        parsed=parsed,
    )


def _infer_answer(response: web.Response) -> web.Response:
    assert isinstance(response.body, bytes)
    try:
        answer = orjson.loads(response.body)
        text = answer["choices"][0]["message"]["content"] or ""
        usage = answer.get("usage") or {}
        tokens = int(usage.get("total_tokens") or usage.get("completion_tokens") or 0)
        model = str(answer.get("model", ""))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return response
    body = orjson.dumps({"text": text, "tokensUsed": tokens, "model": model})
    headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-")}
    return web.Response(body=body, content_type="application/json", headers=headers)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
