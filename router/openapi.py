"""The router's API as OpenAPI 3.1, served at ``/openapi.json``.

Written as a compact table and expanded once at start; a test checks that it lists exactly the
routes the app serves, so it stays true.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from node_protocol.wire import BACKEND_KINDS

ERROR = {"$ref": "#/components/schemas/Error"}
ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
JSON_OBJECT = {"type": "object"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1},
            "stream_options": {"type": "object"},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "prompt": {},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer", "minimum": 1},
        },
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "MessagesRequest": {
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "system": {},
            "stream": {"type": "boolean"},
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"type": "object"},
            "stop_sequences": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ResponsesRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "input": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array"}]},
            "instructions": {"type": "string"},
            "stream": {"type": "boolean"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "tools": {"type": "array", "items": {"type": "object"}},
            "previous_response_id": {"type": "null"},
        },
    },
    "InferRequest": {
        "oneOf": [
            {"$ref": "#/components/schemas/ChatCompletionRequest"},
            {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "minLength": 1},
                    "maxTokens": {"type": "integer", "minimum": 1},
                    "model": {"type": "string"},
                },
            },
        ]
    },
    "Registration": {
        "type": "object",
        "required": ["name", "baseUrl"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "baseUrl": {"type": "string", "format": "uri"},
            "healthUrl": {"type": ["string", "null"]},
            "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "report": {"$ref": "#/components/schemas/LoadReport"},
        },
    },
    "LoadReport": {
        "type": "object",
        "required": ["seq", "sentAt", "backendKind", "backendHealth", "inFlight"],
        "properties": {
            "seq": {"type": "integer"},
            "sentAt": {"type": "number"},
            "backendKind": {
                "enum": list(BACKEND_KINDS),
            },
            "backendHealth": {"enum": ["ok", "degraded", "unhealthy"]},
            "inFlight": {"type": "integer", "minimum": 0},
            "models": {"type": "array", "items": JSON_OBJECT},
            "gpus": {"type": "array", "items": JSON_OBJECT},
        },
    },
}

# (method, path, tag, summary, request schema or None, success status)
ROUTES: list[tuple[str, str, str, str, str | None, str]] = [
    ("GET", "/health", "ops", "Liveness of the router", None, "200"),
    ("GET", "/ready", "ops", "Readiness (503 while shutting down)", None, "200"),
    ("GET", "/metrics", "ops", "Prometheus metrics", None, "200"),
    ("GET", "/openapi.json", "ops", "This document", None, "200"),
    ("GET", "/dashboard", "ops", "Live page", None, "200"),
    ("GET", "/api/dashboard", "ops", "Data behind the live page", None, "200"),
    ("GET", "/api/server-groups", "groups", "List groups", None, "200"),
    ("GET", "/api/server-groups/{group}/nodes", "groups", "List a group's nodes", None, "200"),
    ("POST", "/api/server-groups/{group}/nodes", "groups", "Register a node", "Registration",
     "201"),
    ("GET", "/api/server-groups/{group}/nodes/{node_id}", "groups", "One node", None, "200"),
    ("PUT", "/api/server-groups/{group}/nodes/{node_id}/report", "groups", "Load report",
     "LoadReport", "200"),
    ("DELETE", "/api/server-groups/{group}/nodes/{node_id}", "groups", "Deregister a node", None,
     "200"),
    ("POST", "/api/server-groups/{group}/nodes/{node_id}/drain", "groups", "Drain a node", None,
     "200"),
    ("POST", "/api/server-groups/{group}/nodes/{node_id}/resume", "groups", "Undo a drain", None,
     "200"),
    ("POST", "/{group}/infer", "octopus", "Octopus infer: chat body or {prompt, maxTokens}",
     "InferRequest", "200"),
]  # fmt: skip

for _prefix in ("/v1", "/{group}/v1", "/{group}"):
    ROUTES += [
        ("POST", f"{_prefix}/chat/completions", "openai", "Chat completion",
         "ChatCompletionRequest", "200"),
        ("POST", f"{_prefix}/completions", "openai", "Completion", "CompletionRequest", "200"),
        ("POST", f"{_prefix}/embeddings", "openai", "Embeddings", "CompletionRequest", "200"),
        ("GET", f"{_prefix}/models", "openai", "Models served by the group", None, "200"),
        ("GET", f"{_prefix}/models/{{model}}", "openai", "One model", None, "200"),
    ]  # fmt: skip
for _prefix in ("/v1", "/{group}/v1"):
    ROUTES.append(
        ("POST", f"{_prefix}/messages", "anthropic", "Anthropic Messages", "MessagesRequest", "200")
    )
for _prefix in ("/v1", "/{group}/v1", "/{group}"):
    ROUTES.append(
        ("POST", f"{_prefix}/responses", "openai", "Responses (stateless)", "ResponsesRequest",
         "200")
    )  # fmt: skip
for _prefix in ("/{group}", ""):
    ROUTES += [
        ("POST", f"{_prefix}/api/{op}", "ollama", f"Ollama {op}", None, "200")
        for op in ("chat", "generate", "embed")
    ]
    ROUTES += [
        ("GET", f"{_prefix}/api/{op}", "ollama", f"Ollama {op} (union)", None, "200")
        for op in ("tags", "ps", "version")
    ]
for _op in ("infer", "generate", "generate_stream"):
    ROUTES += [
        ("POST", f"/{{group}}/v2/models/{{model}}/{_op}", "triton", f"Triton {_op}", None, "200"),
        ("POST", f"/{{group}}/v2/models/{{model}}/versions/{{v}}/{_op}", "triton",
         f"Triton {_op}", None, "200"),
    ]  # fmt: skip
ROUTES += [
    ("GET", "/{group}/v2/health/live", "triton", "Triton liveness", None, "200"),
    ("GET", "/{group}/v2/health/ready", "triton", "Triton readiness (400 when not)", None, "200"),
    ("GET", "/{group}/v2/models/{model}/ready", "triton", "Model readiness", None, "200"),
]


def _operation(tag: str, summary: str, schema: str | None, ok: str, path: str) -> dict[str, Any]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in ("group", "node_id", "model", "v")
        if f"{{{name}}}" in path
    ]
    schema_ref = ANTHROPIC_ERROR if tag == "anthropic" else ERROR
    error = {"description": "Error", "content": {"application/json": {"schema": schema_ref}}}
    op: dict[str, Any] = {
        "tags": [tag],
        "summary": summary,
        "parameters": params,
        "responses": {ok: {"description": "Success"}, "4XX": error, "5XX": error},
    }
    if schema is not None:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return op


def build_spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, tag, summary, schema, ok in ROUTES:
        paths.setdefault(path, {})[method.lower()] = _operation(tag, summary, schema, ok, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Inference router", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


class OpenApiDoc:
    def __init__(self) -> None:
        self._body = orjson.dumps(build_spec())

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self._body, content_type="application/json")
